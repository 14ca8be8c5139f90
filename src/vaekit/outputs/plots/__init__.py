"""Every figure of the notes from a saved run directory (weights + config + data), as PNG files.

    from vaekit import plots
    plots.plot_run("runs/vae2")                      # every kind that applies -> runs/vae2/figures/
    plots.manifold("runs/vae2", "m.png", resolution=30, z_range=(-3, 3))
    plots.compare_runs(["runs/ae2", "runs/vae2"], out="compare")

A kind that does not apply to a run (a 2-D manifold of a 1-D latent, ...) is skipped: the call
returns a `Skipped` with the one-line reason (and logs it) instead of raising.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError
from ...files import atomic_write_bytes
from .render import ALIASES, KINDS, figure, pixel_size, render, resolve_kinds
from .run import NotApplicable, PlotOptions, Run

Log = Callable[[str], None] | None


@dataclass(frozen=True)
class Skipped:
    """A figure that does not apply to the run(s), and why."""

    kind: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.kind}: {self.reason}"


@dataclass
class Figures:
    written: dict[str, Path] = field(default_factory=dict)   # kind -> PNG
    skipped: dict[str, str] = field(default_factory=dict)    # kind -> reason


def open_run(run: str | Path | Run, device: str = "cpu", data_dir: str | None = None, checkpoint: str = "last",
             allow_changed_data: bool = False) -> Run:
    """A run directory opened for figures (a Run passes through, so several figures share one load)."""
    return run if isinstance(run, Run) else Run(run, device, data_dir, checkpoint, allow_changed_data)


def _options(options: PlotOptions | None, overrides: dict) -> PlotOptions:
    options = options or PlotOptions()
    return dataclasses.replace(options, **overrides) if overrides else options


def _write(kind: str, runs: list[Run], out: Path, opt: PlotOptions, log: Log) -> Path | Skipped:
    if out.is_dir():
        raise ConfigError(f"out={str(out)!r} (--out) is a folder; give a file name such as {out / (kind + '.png')}")
    png, reason = render(kind, runs, opt)
    if png is None:
        result = Skipped(kind, reason)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, png)
        result = out
    if log:
        log(str(result) if isinstance(result, Skipped) else f"wrote {out}")
    return result


def plot(run, kind: str, out: str | Path | None = None, options: PlotOptions | None = None, *,
         device: str = "cpu", data_dir: str | None = None, checkpoint: str = "last", allow_changed_data: bool = False, log: Log = print,
         **overrides) -> Path | Skipped:
    """One figure kind of one run as a PNG (default RUN/figures/KIND.png); keyword overrides set PlotOptions fields."""
    kind = resolve_kinds([kind])[0]
    r = open_run(run, device, data_dir, checkpoint, allow_changed_data)
    return _write(kind, [r], Path(out) if out else r.dir / "figures" / f"{kind}.png", _options(options, overrides), log)


def samples(run, out=None, options: PlotOptions | None = None, **kw) -> Path | Skipped:
    """A grid of decoder means for z ~ p(z) (n_samples, temperature, seed)."""
    return plot(run, "samples", out, options, **kw)


def reconstructions(run, out=None, options: PlotOptions | None = None, **kw) -> Path | Skipped:
    """Test images above their reconstructions (n_reconstructions)."""
    return plot(run, "reconstructions", out, options, **kw)


def manifold(run, out=None, options: PlotOptions | None = None, **kw) -> Path | Skipped:
    """z on a regular grid over z_range^2 (resolution per side; dims for latent_dim > 2, others 0), decoded and tiled."""
    return plot(run, "manifold", out, options, **kw)


def traversal(run, out=None, options: PlotOptions | None = None, **kw) -> Path | Skipped:
    """Each latent dimension over z_range, others 0, rows by use (average KL per dimension); a 1-D latent: one strip."""
    return plot(run, "traversal", out, options, **kw)


strip = traversal


def scatter(run, out=None, options: PlotOptions | None = None, **kw) -> Path | Skipped:
    """Posterior means of the test set coloured by label (projection for latent_dim > 2: pca, tsne or dims)."""
    return plot(run, "scatter", out, options, **kw)


def interpolate(run, out=None, options: PlotOptions | None = None, **kw) -> Path | Skipped:
    """Decoded z along the line (and with great_circle=True the great circle) between pairs of test images."""
    return plot(run, "interpolate", out, options, **kw)


def curves(run, out=None, options: PlotOptions | None = None, **kw) -> Path | Skipped:
    """Train and validation loss, reconstruction and KL per epoch from metrics.jsonl."""
    return plot(run, "curves", out, options, **kw)


def _out_dir(out: Path) -> Path:
    if out.is_symlink():
        raise ConfigError(f"out={str(out)!r} (--out) is a symbolic link; vaekit writes figures only into a real folder (remove the "
                          "link or give another --out)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} (--out) is a file; give a folder for the figures")
    return out


def plot_run(run, kinds=None, out: str | Path | None = None, options: PlotOptions | None = None, *,
             device: str = "cpu", data_dir: str | None = None, checkpoint: str = "last", allow_changed_data: bool = False, log: Log = print,
             **overrides) -> Figures:
    """`vaekit plot RUN`: each kind (default: all) as OUT/KIND.png (default OUT: RUN/figures)."""
    names, opt = resolve_kinds(kinds), _options(options, overrides)
    r = open_run(run, device, data_dir, checkpoint, allow_changed_data)
    r.check_options(opt)
    out = _out_dir(Path(out) if out else r.dir / "figures")
    result = Figures()
    for kind in names:
        written = _write(kind, [r], out / f"{kind}.png", opt, log)
        if isinstance(written, Skipped):
            result.skipped[kind] = written.reason
        else:
            result.written[kind] = written
    return result


def compare_runs(runs, kinds=None, out: str | Path = "compare", options: PlotOptions | None = None, *,
                 device: str = "cpu", data_dir: str | None = None, checkpoint: str = "last", allow_changed_data: bool = False, log: Log = print,
                 **overrides) -> Figures:
    """`vaekit compare RUN_A RUN_B ...`: each kind with the runs side by side, as OUT/compare-KIND.png;
    every panel names its run's model, latent_dim and test loss."""
    if isinstance(runs, (str, Path, Run)) or len(runs) < 2:
        raise ConfigError("compare needs at least two runs: vaekit compare RUN_A RUN_B ...")
    names, opt = resolve_kinds(kinds), _options(options, overrides)
    opened = [open_run(r, device, data_dir, checkpoint, allow_changed_data) for r in runs]
    for r in opened:
        r.check_options(opt)
    out = _out_dir(Path(out))
    result = Figures()
    for kind in names:
        written = _write(kind, opened, out / f"compare-{kind}.png", opt, log)
        if isinstance(written, Skipped):
            result.skipped[kind] = written.reason
        else:
            result.written[kind] = written
    return result


__all__ = ["ALIASES", "KINDS", "Figures", "NotApplicable", "PlotOptions", "Run", "Skipped", "compare_runs", "curves",
           "figure", "interpolate", "manifold", "open_run", "pixel_size", "plot", "plot_run", "reconstructions",
           "render", "resolve_kinds", "samples", "scatter", "strip", "traversal"]
