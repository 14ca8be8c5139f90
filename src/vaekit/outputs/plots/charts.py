"""Charts of numbers rather than decoded images: the scatter of posterior means by label, and the
training curves from metrics.jsonl. Each draws into a matplotlib (sub)figure and returns its title."""

from __future__ import annotations

import torch

from .run import NotApplicable, PlotOptions, Run

CLASS_COLOURS = "tab10"


def project(run: Run, mu: torch.Tensor, opt: PlotOptions) -> tuple[torch.Tensor, tuple[str, str], str]:
    """(N, D) posterior means -> (N, 2) points to draw, axis labels and how they were made."""
    D = mu.shape[1]
    if D == 2 or (D > 2 and opt.projection == "dims"):
        (d0, d1), how = run.two_dims(opt.dims)
        chosen = f"; $z_{{{d0}}}$, $z_{{{d1}}}$ of {D} dimensions: {how}" if D > 2 else ""
        return mu[:, [d0, d1]], (f"$z_{{{d0}}}$", f"$z_{{{d1}}}$"), chosen
    if opt.projection == "pca":
        centred = mu - mu.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # principal axes are the rows of vh
        explained = (s[:2] ** 2).sum() / (s ** 2).sum().clamp_min(1e-12)
        how = f"; PCA of the {D}-D means (PC 1 and 2: {explained:.0%} of their variance)"
        return centred @ vh[:2].T, ("PC 1", "PC 2"), how
    from sklearn.manifold import TSNE  # noqa: PLC0415  (scikit-learn's t-SNE: imported only when asked for)

    perplexity = min(30.0, (len(mu) - 1) / 3)
    points = TSNE(2, perplexity=perplexity, init="pca", random_state=opt.seed).fit_transform(mu.numpy())
    return torch.from_numpy(points), ("t-SNE 1", "t-SNE 2"), f"; t-SNE of the {D}-D means"


def draw_scatter(run: Run, fig, opt: PlotOptions) -> str:
    import matplotlib  # noqa: PLC0415  (matplotlib: imported when a figure is drawn, not by every command)
    from matplotlib.patches import Circle  # noqa: PLC0415

    run.need_continuous_z("scatter")
    y = run.test.y
    if y is None:
        raise NotApplicable(f"the test set of {run.name} has no labels to colour the points by")
    mu, y = run.mu.cpu(), y.cpu()
    if len(mu) > opt.max_points:
        keep = torch.randperm(len(mu), generator=torch.Generator().manual_seed(opt.seed))[:opt.max_points]
        mu, y = mu[keep], y[keep]
    what = "posterior means" if run.uses_kl else "codes"
    ax = fig.subplots()
    if run.latent_dim == 1:  # z along x; the label, jittered, along y
        jitter = torch.rand(len(y), generator=torch.Generator().manual_seed(opt.seed)) * 0.6 - 0.3
        points, (xlabel, ylabel), how = torch.stack([mu[:, 0], y + jitter], 1), ("z", f"{run.label_name} (jittered)"), ""
        ticks = sorted(set(y.tolist()))
        ax.set_yticks(ticks, [run.class_name(c) for c in ticks])
    else:
        points, (xlabel, ylabel), how = project(run, mu, opt)
    size = max(2.5, min(16.0, 25000 / len(points)))
    cmap = matplotlib.colormaps[CLASS_COLOURS]
    for c in sorted(set(y.tolist())):
        sel = y == c
        ax.scatter(points[sel, 0], points[sel, 1], s=size, alpha=0.7, color=cmap(c % cmap.N), label=run.class_name(c),
                   linewidths=0)
    sd = getattr(run.model.prior(), "unit_sd", None)   # an isotropic prior: circles where it puts z
    if sd and (run.latent_dim == 2 or (run.latent_dim > 2 and opt.projection == "dims")):
        for r in (1, 2):
            ax.add_patch(Circle((0, 0), r * sd, fill=False, ls="--", lw=1, color="0.3"))
        how += f"; dashed: 1 and 2 sd of {run.prior_name}"
    if run.latent_dim >= 2:
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(title=run.label_name, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=max(1.0, 6 / size ** 0.5),
              frameon=False)
    return f"{what} of {len(points)} test examples by {run.label_name}{how}"


def draw_curves(run: Run, fig, opt: PlotOptions) -> str:
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415  (matplotlib: only when a figure is drawn)

    rows = run.metrics
    if not rows:
        raise NotApplicable(f"{run.dir / 'metrics.jsonl'} holds no finished epoch")
    epochs = [r["epoch"] for r in rows]
    # the objective by its loss's name; the reconstruction term beside it unless they are one (an AE); the KL
    # (and the plain -ELBO where a schedule or beta makes the objective differ from it) for a model with q(z|x)
    loss = run.config.train.loss
    if all(abs(r["train_loss"] - r["train_recon"]) < 1e-9 for r in rows):
        terms = [("loss", f"objective ({loss}: the reconstruction)")]
    else:
        terms = [("loss", f"objective ({loss})"), ("recon", "reconstruction -log p(x|z)")]
    if run.uses_kl and any(abs(r.get("train_neg_elbo", r["train_loss"]) - r["train_loss"]) > 1e-6 for r in rows):
        terms.append(("neg_elbo", "-ELBO (recon + KL)"))
    panels = [terms, [("kl", "KL")]] if run.uses_kl else [terms]
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    marker = "o" if len(rows) <= 30 else None
    colours = {"loss": "C0", "recon": "C1", "kl": "C2", "neg_elbo": "C3"}
    for ax, panel in zip(axes, panels, strict=True):
        for term, name in panel:
            for split, style in (("train", "-"), ("val", "--")):
                key = f"{split}_{term}"
                if key in rows[0]:
                    ax.plot(epochs, [r[key] for r in rows], style, marker=marker, ms=3, color=colours[term],
                            label=f"{split} {name}")
        ax.set_ylabel("nats / image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return "per-epoch means from metrics.jsonl: train solid, validation dashed"
