"""Generation: z ~ N(0, I) through the decoder, written as an image grid (PNG) or, for a table, as CSV rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from .checkpoint import atomic_write_text, load_model
from .errors import ConfigError
from .images import image_grid, save_png
from .models import check_label
from .runtime import resolve_device


def sample_run(run_dir: str | Path, n: int = 64, out: str | Path | None = None, temperature: float = 1.0,
               seed: int = 0, nrow: int | None = None, scale: int = 2, device: str = "auto",
               label: int | None = None) -> Path:
    """`vaekit sample RUN`: decode n draws of z ~ N(0, temperature^2 I). Images: the means of p(x|z)
    as a PNG grid (default samples.png). A table: the means as CSV rows in the units and columns
    of its file (default samples.csv; the file is read again for its mean and std). A conditional
    model draws class `label`, or with none every class in turn (one column per class)."""
    if n < 1:
        raise ConfigError(f"-n {n} is impossible: ask for at least one sample")
    if temperature <= 0:
        raise ConfigError(f"--temperature {temperature} is impossible: it must be > 0")
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {Path(out) / 'samples.png'}")
    model, config, _ = load_model(run_dir, resolve_device(device))
    table = len(config.model.input_shape) == 1  # (D,) rows rather than (C, H, W) images
    out = Path(out or ("samples.csv" if table else "samples.png"))
    if table and out.suffix.lower() != ".csv":
        raise ConfigError(f"{run_dir} models table rows of {config.model.input_shape[0]} columns, not images; "
                          f"write its samples as CSV: --out {out.with_suffix('.csv')}")
    if not table and out.suffix.lower() == ".csv":
        raise ConfigError(f"{run_dir} models images, written as a PNG grid: --out {out.with_suffix('.png')}")
    check_label(model, label, run_dir)
    if model.conditional:
        nrow = nrow or (config.model.num_classes if label is None else None)   # one column per class
        model = model.given(model.classes_in_turn(n) if label is None else label)
    torch.manual_seed(seed)
    if not table:
        return save_png(image_grid(model.generate(n, temperature), nrow), out, scale)
    with torch.no_grad():
        x = model.decode(model.prior(model.device).sample(n, temperature)).mean.float().cpu()  # (n, D), standardised
    return write_table(x, out, run_config=config)


def write_table(x: torch.Tensor, out: str | Path, run_config) -> Path:
    """Rows (n, D) in the standardised units a run trained on -> a CSV in the units and columns of its data."""
    from .data import load_data

    data = load_data(run_config.data)
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
