"""Figures made of decoded images: samples, reconstructions, the 2-D manifold, latent traversals
(the 1-D strip) and interpolations. Each draws into a matplotlib (sub)figure and returns its title."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..images import image_grid
from .run import NotApplicable, PlotOptions, Run

PAD = 2  # pixels between tiles (image_grid's white padding)


def show(ax, grid: np.ndarray, **kw) -> None:
    """An (H, W, C) uint8 tile grid, grey or colour, pixel for pixel."""
    img = grid[..., 0] if grid.shape[-1] == 1 else grid
    ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest", **kw)


def tile_centres(n: int, size: int, pad: int = PAD) -> list[float]:
    """Pixel coordinate of the centre of each of n tiles of `size` pixels laid out by image_grid."""
    return [pad + i * (size + pad) + (size - 1) / 2 for i in range(n)]


@torch.no_grad()
def decode(run: Run, z: torch.Tensor, label: int | None = None) -> torch.Tensor:
    """z (N, D) -> the mean of p(x|z) (a conditional model: p(x|z, y = label)), (N, C, H, W) in [0, 1]."""
    return run.given(label).decode(z.to(run.model.device)).mean.clamp(0, 1).float().cpu()


def images_only(draw):
    """A figure of decoded images does not apply to a run on table rows: say so instead of drawing."""
    @functools.wraps(draw)
    def checked(run: Run, fig, opt: PlotOptions) -> str:
        shape = run.config.model.input_shape
        if len(shape) != 3:
            raise NotApplicable(f"{run.name} models table rows of {shape[0]} columns, not images; "
                                "`vaekit sample RUN --out samples.csv` writes decoded rows")
        return draw(run, fig, opt)
    return checked


def _z(v: float) -> str:
    return f"{v:.2g}" if abs(v) < 10 else f"{v:.0f}"


@images_only
def draw_samples(run: Run, fig, opt: PlotOptions) -> str:
    per_class = run.conditional and opt.label is None  # a conditional model: one column per class
    with run.seeded(opt.seed):
        x = run.model.generate(opt.n_samples, opt.temperature) if per_class \
            else run.given(opt.label).generate(opt.n_samples, opt.temperature)
    ax = fig.subplots()
    show(ax, image_grid(x.cpu(), nrow=run.config.model.num_classes if per_class else None))
    ax.set_axis_off()
    temp = "" if opt.temperature == 1 else f" (temperature {opt.temperature:g})"
    title = f"{opt.n_samples} samples: mean of p(x|z), z ~ {run.prior_name}{temp}"
    if run.conditional:
        title += f"\nconditioned on y: one column per class, 0 to {run.config.model.num_classes - 1}" if per_class \
            else f"\nconditioned on y = {opt.label}"
    elif not run.uses_kl and not run.discrete:
        title += f"\nan AE has no prior: its codes need not live where {run.prior_name} puts z"
    return title


RECON_COLUMNS = 16


def reconstruction_rows(opt: PlotOptions) -> int:
    return 2 * math.ceil(opt.n_reconstructions / RECON_COLUMNS)


@images_only
def draw_reconstructions(run: Run, fig, opt: PlotOptions) -> str:
    n = min(opt.n_reconstructions, len(run.test))
    x = run.test.head(n)
    x_hat = run.model.given(None if run.test.y is None else run.test.y[:n]).reconstruct(x)
    ncol = min(n, RECON_COLUMNS)
    rows = []
    for start in range(0, n, ncol):  # each chunk of ncol images: a row of x above a row of x_hat
        for block in (x[start:start + ncol], x_hat[start:start + ncol]):
            blank = torch.ones(ncol - len(block), *block.shape[1:], device=block.device)
            rows.append(torch.cat([block, blank]))
    grid = image_grid(torch.cat(rows).cpu(), nrow=ncol)
    ax = fig.subplots()
    show(ax, grid)
    ax.set_yticks(tile_centres(len(rows), x.shape[-2]), ["x (test)", "$\\hat{x}$"] * (len(rows) // 2))
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return f"{n} test images x above their reconstructions $\\hat{{x}}$ = mean of p(x|z), z = mode of q(z|x)"


@images_only
def draw_manifold(run: Run, fig, opt: PlotOptions) -> str:
    run.need_continuous_z("manifold")
    if run.latent_dim < 2:
        raise NotApplicable(f"a 2-D manifold needs latent_dim >= 2 and {run.name} has {run.latent_dim}; "
                            "the traversal figure shows a 1-D latent as a strip")
    (d0, d1), how = run.two_dims(opt.dims)
    lo, hi = opt.z_range
    n = opt.resolution
    v = torch.linspace(lo, hi, n)
    z = torch.zeros(n * n, run.latent_dim)
    z[:, d0] = v.repeat(n)                   # left to right within a row
    z[:, d1] = v.flip(0).repeat_interleave(n)  # top row is the highest z_d1
    grid = image_grid(decode(run, z, opt.label), nrow=n, pad=0)
    step = (hi - lo) / (n - 1)
    ax = fig.subplots()
    show(ax, grid, extent=(lo - step / 2, hi + step / 2, lo - step / 2, hi + step / 2))
    ax.set_xlabel(f"$z_{{{d0}}}$")
    ax.set_ylabel(f"$z_{{{d1}}}$")
    title = f"mean of p(x|z) decoded on a {n} x {n} grid over [{lo:g}, {hi:g}]$^2${run.label_note(opt.label)}"
    if run.latent_dim > 2:
        title += f"\n$z_{{{d0}}}$, $z_{{{d1}}}$: {how}; the other {run.latent_dim - 2} dimensions held at 0"
    return title


def traversal_rows(run: Run, opt: PlotOptions) -> int:
    return min(run.latent_dim, opt.max_rows)


@images_only
def draw_traversal(run: Run, fig, opt: PlotOptions) -> str:
    run.need_continuous_z("traversal")
    order = run.by_usage()[:opt.max_rows]
    usage = run.usage.cpu()
    steps = opt.steps or (21 if run.latent_dim == 1 else 11)
    lo, hi = opt.z_range
    v = torch.linspace(lo, hi, steps)
    z = torch.zeros(len(order) * steps, run.latent_dim)
    for r, d in enumerate(order):
        z[r * steps:(r + 1) * steps, d] = v
    x = decode(run, z, opt.label)
    h, w = x.shape[-2:]
    ax = fig.subplots()
    show(ax, image_grid(x, nrow=steps))
    every = max(1, round(steps / 11))
    ax.set_xticks(tile_centres(steps, w)[::every], [_z(t) for t in v.tolist()[::every]])
    unit = " nats" if run.usage_name == "KL" else ""
    ax.set_yticks(tile_centres(len(order), h), [f"$z_{{{d}}}$  {run.usage_name} {usage[d]:.2f}{unit}" for d in order])
    ax.tick_params(length=0)
    if run.latent_dim == 1:
        ax.set_xlabel("z")
        return f"1-D latent: z from {lo:g} to {hi:g} decoded (mean of p(x|z)){run.label_note(opt.label)}"
    ax.set_xlabel("value of the row's $z_d$ (all other dimensions 0)")
    shown = f"the {len(order)} most used of {run.latent_dim} dimensions" if len(order) < run.latent_dim \
        else "one row per latent dimension"
    by = "average KL per dimension over the test set" if run.usage_name == "KL" \
        else "variance of the codes over the test set" + ("" if run.uses_kl else " (an AE has no KL)")
    return f"traversal: {shown}, rows ordered by {by}{run.label_note(opt.label)}"


def interpolation_rows(run: Run, opt: PlotOptions) -> int:
    pairs = len(opt.pairs) if opt.pairs else opt.n_pairs
    return pairs * (2 if opt.great_circle and run.latent_dim > 1 else 1)


def default_pairs(y: torch.Tensor | None, n_pairs: int, n: int) -> list[tuple[int, int]]:
    """Test images of digits 0 -> 1, 2 -> 3, ... (the first of each, then the next ones);
    without labels, images 0 -> 1, 2 -> 3, ..."""
    if y is not None:
        classes = sorted(set(y.tolist()))
        where = {c: (y == c).nonzero().flatten().tolist() for c in classes}
        pairs = []
        for k in range(n_pairs):
            a, b = classes[(2 * k) % len(classes)], classes[(2 * k + 1) % len(classes)]
            occurrence = (2 * k) // len(classes)
            if occurrence >= min(len(where[a]), len(where[b])):
                break
            pairs.append((where[a][occurrence], where[b][occurrence]))
        if len(pairs) == n_pairs:
            return pairs
    return [(2 * k, 2 * k + 1) for k in range(n_pairs) if 2 * k + 1 < n]


def slerp(za: torch.Tensor, zb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The great circle from za to zb (D,), at fractions t (T,) -> (T, D) (Shoemake 1985; White 2016
    for VAEs); the straight line where the angle between them is 0 or pi."""
    cos = (za @ zb) / (za.norm() * zb.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if torch.sin(omega) < 1e-6:
        return torch.lerp(za, zb, t[:, None])
    return (torch.sin((1 - t) * omega)[:, None] * za + torch.sin(t * omega)[:, None] * zb) / torch.sin(omega)


@images_only
def draw_interpolate(run: Run, fig, opt: PlotOptions) -> str:
    run.need_continuous_z("interpolate")
    test = run.test
    pairs = list(opt.pairs) if opt.pairs else default_pairs(test.y, opt.n_pairs, len(test))
    if not pairs:
        raise NotApplicable(f"the test set of {run.name} has fewer than two images")
    run.check_pairs(pairs)
    steps = opt.steps or 10
    t = torch.linspace(0, 1, steps)
    circle = opt.great_circle and run.latent_dim > 1
    tiles, labels = [], []
    for i, j in pairs:
        x = test.take(torch.tensor([i, j]))
        with torch.no_grad():
            za, zb = run.model.given(None if test.y is None else test.y[[i, j]]).encode(x).mode.float().cpu()
        name = f"{int(test.y[i])} → {int(test.y[j])}" if test.y is not None else f"#{i} → #{j}"
        paths = [("line", torch.lerp(za, zb, t[:, None]))] + ([("great circle", slerp(za, zb, t))] if circle else [])
        for how, z in paths:
            tiles += [x[:1].cpu(), decode(run, z, opt.label), x[1:].cpu()]
            labels.append(f"{name}  {how}")
    ax = fig.subplots()
    h, w = test.shape[-2:]
    show(ax, image_grid(torch.cat(tiles), nrow=steps + 2))
    every = max(1, round(steps / 10))
    xs = tile_centres(steps + 2, w)
    ax.set_xticks([xs[0], *xs[1:-1][::every], xs[-1]], ["x$_a$", *[f"{v:.2g}" for v in t.tolist()[::every]], "x$_b$"])
    ax.set_yticks(tile_centres(len(labels), h), labels)
    ax.set_xlabel("t: decoded z(t) from the posterior mode of x$_a$ (t = 0) to that of x$_b$ (t = 1)")
    ax.tick_params(length=0)
    how = "straight line and great circle" if circle else "straight line"
    note = "\n(great circle: undefined for a 1-D latent)" if opt.great_circle and not circle else ""
    return f"interpolation between test images along the {how} in z{run.label_note(opt.label)}{note}"
