"""The figure kinds (one registry) and turning a kind into PNG bytes, for one run or side by side
for several. Figures are built with matplotlib's object API on an Agg canvas: no pyplot, no
global backend switch, and a fixed size in inches times a fixed dpi, so the pixel size is known."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ...errors import ConfigError
from . import charts, decoded
from .run import NotApplicable, PlotOptions, Run

TITLE_SIZE = 10


@dataclass(frozen=True)
class Kind:
    draw: Callable          # draw(run, (sub)figure, options) -> title; raises NotApplicable
    size: Callable          # size(run, options) -> (width, height) in inches
    about: str              # one line for --help and the report


def _fixed(width: float, height: float) -> Callable:
    return lambda run, opt: (width, height)


KINDS = {
    "samples": Kind(decoded.draw_samples, _fixed(6.0, 6.6), "decoder outputs for z drawn from the prior p(z)"),
    "reconstructions": Kind(decoded.draw_reconstructions,
                           lambda run, opt: (9.0, 1.0 + 0.55 * decoded.reconstruction_rows(opt)),
                           "test images above their reconstructions"),
    "manifold": Kind(decoded.draw_manifold, _fixed(7.5, 8.0), "a regular grid of z decoded and tiled"),
    "traversal": Kind(decoded.draw_traversal, lambda run, opt: (9.0, 1.4 + 0.55 * decoded.traversal_rows(run, opt)),
                      "one z at a time decoded over a range (a 1-D latent: the strip)"),
    "scatter": Kind(charts.draw_scatter, _fixed(8.0, 7.0), "posterior means of the test set by class"),
    "interpolate": Kind(decoded.draw_interpolate,
                        lambda run, opt: (9.0, 1.5 + 0.55 * decoded.interpolation_rows(run, opt)),
                        "decoded z between the codes of two test images"),
    "curves": Kind(charts.draw_curves, _fixed(8.0, 6.0), "train and validation loss, reconstruction and KL per epoch"),
}
ALIASES = {"strip": "traversal"}


def resolve_kinds(kinds=None) -> list[str]:
    """Kind names (aliases allowed, None = all) -> registry keys, in the order given, once each."""
    if kinds is None:
        return list(KINDS)
    if isinstance(kinds, str):
        kinds = [kinds]
    names = []
    for k in kinds:
        name = ALIASES.get(k, k)
        if name not in KINDS:
            raise ConfigError(f"figure kind {k!r} is unknown; choose from {', '.join([*KINDS, *ALIASES])}")
        if name not in names:
            names.append(name)
    return names


def pixel_size(kind: str, runs: list[Run], opt: PlotOptions) -> tuple[int, int]:
    """(width, height) in pixels of the PNG `render` writes for these runs."""
    width, height = _inches(kind, runs, opt)
    return round(width * opt.dpi), round(height * opt.dpi)


def _png(fig) -> bytes:
    """The figure's pixels as a PNG: 8-bit grey when it has no colour (tiles of grey images),
    else RGB; both lossless, and smaller than matplotlib's RGBA."""
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    buf = io.BytesIO()
    # optimize=True tried every filter and was 4-5x slower for files within 5% of the size (measured on the report)
    Image.fromarray(np.ascontiguousarray(rgb[..., 0] if grey else rgb)).save(buf, format="PNG")
    return buf.getvalue()


def _inches(kind: str, runs: list[Run], opt: PlotOptions) -> tuple[float, float]:
    sizes = [KINDS[kind].size(run, opt) for run in runs]
    if len(runs) == 1:
        return sizes[0]
    return sum(w for w, _ in sizes), max(h for _, h in sizes) + 0.3  # + the figure title


def figure(kind: str, runs: list[Run], opt: PlotOptions):
    """The matplotlib Figure of `kind` for one run, or side by side for several; None and the
    reason when it applies to none of them. A run it does not apply to gets a panel saying why."""
    # matplotlib costs ~0.5 s to import: loaded when a figure is drawn, not by every vaekit command
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    width, height = pixel_size(kind, runs, opt)
    fig = Figure(figsize=(width / opt.dpi, height / opt.dpi), dpi=opt.dpi, layout="constrained")
    FigureCanvasAgg(fig)
    if len(runs) == 1:
        try:
            title = KINDS[kind].draw(runs[0], fig, opt)
        except NotApplicable as e:
            return None, str(e)
        fig.suptitle(f"{runs[0].describe()}\n{title}", fontsize=TITLE_SIZE)
        return fig, None
    widths = [KINDS[kind].size(run, opt)[0] for run in runs]
    panels = fig.subfigures(1, len(runs), width_ratios=widths)
    reasons = []
    for run, panel in zip(runs, panels, strict=True):
        try:
            title = KINDS[kind].draw(run, panel, opt)
        except NotApplicable as e:
            reasons.append(str(e))
            panel.text(0.5, 0.5, f"not applicable:\n{e}", ha="center", va="center", wrap=True, fontsize=TITLE_SIZE)
            title = ""
        panel.suptitle(f"{run.describe(test_loss=True)}\n{title}".rstrip(), fontsize=TITLE_SIZE)
    if len(reasons) == len(runs):
        return None, "; ".join(dict.fromkeys(reasons))
    fig.suptitle(f"{kind}: {KINDS[kind].about}", fontsize=TITLE_SIZE + 1, fontweight="bold")
    return fig, None


def render(kind: str, runs: list[Run], opt: PlotOptions) -> tuple[bytes | None, str | None]:
    """(PNG bytes, None), or (None, why the figure does not apply)."""
    fig, reason = figure(kind, runs, opt)
    if fig is None:
        return None, reason
    return _png(fig), None
