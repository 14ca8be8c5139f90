"""Generation: z ~ p(z) through the decoder, written as an image grid (PNG) or, for a table, as CSV rows."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path

import torch

from ..config.schema import field_ref, impossible, options_of
from ..data.dataset import load_run_data
from ..errors import ConfigError
from ..files import atomic_write_text
from ..models.family import check_label
from ..runtime import resolve_device
from ..store.checkpoint import load_model
from .images import image_grid, save_png

MAX_VALUES = 50_000_000   # numbers one sample command writes (200 MB of float32): bounded before anything is allocated
MAX_SCALE = 16


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """What sample_run (`vaekit sample RUN`) takes besides the run; each field is the flag of the same name."""

    n: int = dataclasses.field(default=64, metadata={"flag": "-n"})   # samples
    out: str | Path | None = None      # the file (None: samples.png, or samples.csv for a table)
    temperature: float = 1.0           # z ~ p(z) with its spread scaled by this
    seed: int = 0
    nrow: int | None = None            # images per row of the grid
    scale: int = 2                     # pixel upscaling of the PNG
    device: str = "auto"
    label: int | None = None           # a conditional model: the class drawn (None: every class in turn)
    noise: bool | None = None          # x ~ p(x|z) rather than its mean (None: draws for tables, means for images)
    checkpoint: str = "last"           # the weights: last or best
    allow_changed_data: bool = False   # a table: read its file again even if it changed since training
    force: bool = False                # replace `out` if it exists (else an existing file is refused)


def sample_run(run_dir: str | Path, options: SampleOptions | None = None, log=print, **fields) -> Path:
    """`vaekit sample RUN`: decode n draws of z ~ p(z) (temperature scales its spread). Images: a PNG grid
    (default samples.png). A table: CSV rows in the units and columns of its file (default samples.csv;
    the file is read again for its mean and std). noise: write x ~ p(x|z) rather than the mean of
    p(x|z) (None: draws for tables, whose means alone are under-dispersed; means for images). A
    conditional model draws class `label`, or with none every class in turn (one column per class). options: a
    SampleOptions, or its fields as keywords (sample_run(run, n=16, out="s.png"))."""
    o = options_of(SampleOptions, options, fields)
    n, out, temperature, seed, nrow, scale, device, label, noise, checkpoint, allow_changed_data = (
        o.n, o.out, o.temperature, o.seed, o.nrow, o.scale, o.device, o.label, o.noise, o.checkpoint, o.allow_changed_data)
    if n < 1:
        raise impossible(SampleOptions, "n", n, "ask for at least one sample")
    if not 0 < temperature < float("inf"):
        raise impossible(SampleOptions, "temperature", temperature, "it must be > 0")
    if nrow is not None and nrow < 1:
        raise impossible(SampleOptions, "nrow", nrow, "give at least one image per row")
    if not 1 <= scale <= MAX_SCALE:
        raise impossible(SampleOptions, "scale", scale, f"use 1 to {MAX_SCALE} (pixel upscaling of the PNG)")
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"out={str(out)!r} ({field_ref(SampleOptions, 'out')}) is a folder; give a file name such as {Path(out) / 'samples.png'}")
    model, config, _ = load_model(run_dir, resolve_device(device), checkpoint)
    table = len(config.model.input_shape) == 1  # (D,) rows rather than (C, H, W) images
    if n * math.prod(config.model.input_shape) > MAX_VALUES:
        raise ConfigError(f"n={n} ({field_ref(SampleOptions, 'n')}) asks for {n * math.prod(config.model.input_shape):,} numbers; this "
                          "command writes at "
                          f"most {MAX_VALUES:,} at once ({MAX_VALUES // math.prod(config.model.input_shape):,} samples of this run)")
    noise = table if noise is None else noise
    out = Path(out or ("samples.csv" if table else "samples.png"))
    if table and out.suffix.lower() != ".csv":
        raise ConfigError(f"{run_dir} models table rows of {config.model.input_shape[0]} columns, not images; "
                          f"write its samples as CSV: --out {out.with_suffix('.csv')}")
    if not table and out.suffix.lower() == ".csv":
        raise ConfigError(f"{run_dir} models images, written as a PNG grid: --out {out.with_suffix('.png')}")
    if out.exists() and not o.force:
        raise ConfigError(f"{out} exists; pass --force (Python: force=True) to replace it, or choose another --out")
    check_label(model, label, run_dir)
    if model.conditional:
        nrow = nrow or (config.model.num_classes if label is None else None)   # one column per class
        model = model.given(model.classes_in_turn(n) if label is None else label)
    torch.manual_seed(seed)
    with torch.no_grad():
        p_x = model.decode(model.prior().sample(n, temperature))
        x = (p_x.sample() if noise else p_x.mean).float().cpu()
    written = write_table(x, out, config, allow_changed_data) if table else save_png(image_grid(x.clamp(0, 1), nrow), out, scale)
    if log:
        what = "x ~ p(x|z), noise included" if noise else "the mean of p(x|z) (--noise draws x ~ p(x|z))"
        log(f"wrote {written}: {n} samples, z ~ {model.prior().name}, {what}")
    return written


def write_table(x: torch.Tensor, out: str | Path, run_config, allow_changed_data: bool = False) -> Path:
    """Rows (n, D) in the standardised units a run trained on -> a CSV in the units and columns of its data."""
    data = load_run_data(run_config.data, allow_changed=allow_changed_data)
    x = data.unstandardise(x)
    columns = data.columns or tuple(f"x{j}" for j in range(x.shape[1]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([f"{v:.7g}" for v in row] for row in x.tolist())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buf.getvalue())
    return out
