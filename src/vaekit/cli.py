"""The `vaekit` command: parse arguments -> config -> one library call. Nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from .config import DEVICES, KL_MODES, LR_SCHEDULES, PIXEL_MODES, PRECISIONS, SCHEDULES, ModelConfig, RunConfig
from .errors import VaekitError

# CLI flag -> (config section, field). Every flag defaults to None: only what is given overrides.
_FIELDS = {
    "model": ("model", "model"), "latent_dim": ("model", "latent_dim"), "hidden": ("model", "hidden_dims"),
    "activation": ("model", "activation"), "arch": ("model", "arch"), "residual": ("model", "residual"),
    "likelihood": ("model", "likelihood"), "obs_std": ("model", "obs_std"),
    "codebook_size": ("model", "codebook_size"), "code_dim": ("model", "code_dim"), "codebook_ema": ("model", "codebook_ema"),
    "commitment": ("train", "commitment"), "prior_epochs": ("train", "prior_epochs"),
    "data": ("data", "source"), "pixels": ("data", "pixels"), "val_size": ("data", "val_size"),
    "data_dir": ("data", "data_dir"), "limit": ("data", "limit"), "path": ("data", "path"),
    "image_size": ("data", "image_size"), "label_column": ("data", "label_column"), "test_fraction": ("data", "test_fraction"),
    "loss": ("train", "loss"), "beta": ("train", "beta"), "mc_samples": ("train", "mc_samples"), "kl": ("train", "kl"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "seed": ("train", "seed"), "device": ("train", "device"), "precision": ("train", "precision"),
    "kl_warmup_epochs": ("train", "kl_warmup_epochs"), "capacity": ("train", "capacity"),
    "capacity_epochs": ("train", "capacity_epochs"), "gamma": ("train", "gamma"),
    "schedule": ("train", "schedule"), "e_steps": ("train", "e_steps"), "m_steps": ("train", "m_steps"),
    "lr_schedule": ("train", "lr_schedule"), "adam_eps": ("train", "adam_eps"), "max_minutes": ("train", "max_minutes"),
}


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """Overlay the flags that were given on `base` (default: RunConfig())."""
    base = base or RunConfig()
    sections = {name: {} for name in ("model", "data", "train")}
    for flag, (section, field) in _FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            sections[section][field] = value
    if "model" in sections["model"] and "loss" not in sections["train"]:
        from .models import MODELS  # an AE trains on its reconstruction loss unless told otherwise
        if sections["model"]["model"] in MODELS:
            sections["train"]["loss"] = MODELS[sections["model"]["model"]].default_loss
    if "likelihood" not in sections["model"] and base.model.likelihood == ModelConfig.likelihood:
        from .data import default_likelihood  # a table is standardised: Gaussian unless told otherwise
        sections["model"]["likelihood"] = default_likelihood(sections["data"].get("source", base.data.source))
    return RunConfig(**{name: dataclasses.replace(getattr(base, name), **vals) for name, vals in sections.items()})


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--model", help="vae (default), cvae (conditioned on the labels), vqvae, ae; see `vaekit list`")
    m.add_argument("--latent-dim", type=int, help="size of z (default 20)")
    m.add_argument("--hidden", type=int, nargs="+", metavar="N", help="hidden layer widths, or conv channel widths (default 400)")
    m.add_argument("--activation", help="relu (default), tanh, elu, gelu, silu, leaky_relu")
    m.add_argument("--arch", help="mlp (default) or conv (then --hidden gives the channel widths of stride-2 convs)")
    m.add_argument("--residual", action="store_true", default=None, help="conv: a residual block after each stage")
    m.add_argument("--likelihood", help="bernoulli (default; gaussian-learned for --data csv), gaussian, gaussian-learned")
    m.add_argument("--obs-std", type=float, help="sigma of the fixed Gaussian likelihood (default 0.1)")
    m.add_argument("--codebook-size", type=int, metavar="K", help="vqvae: codes in the codebook (default 128)")
    m.add_argument("--code-dim", type=int, metavar="E", help="vqvae: numbers per code; z is --latent-dim codes (default 8)")
    m.add_argument("--codebook-ema", action="store_true", default=None, help="vqvae: EMA codebook updates (decay 0.99)")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="mnist (default), fashion-mnist, digits (bundled 8x8 digits, no download), "
                   "folder, npy, csv (your files: --path); see `vaekit list`")
    d.add_argument("--path", help="folder, npy, csv: the folder of images, the .npy/.npz file or the .csv file")
    d.add_argument("--image-size", type=int, metavar="N", help="folder: resize every image to N x N")
    d.add_argument("--label-column", metavar="NAME", help="csv: the column of class labels (not a feature)")
    d.add_argument("--test-fraction", type=float, help="folder, npy, csv: share held out as the test set (default 0.1)")
    d.add_argument("--pixels", choices=PIXEL_MODES, help="grey (default), dynamic or static binarisation")
    d.add_argument("--val-size", type=int, help="validation images carved from the training set (default 5000)")
    d.add_argument("--data-dir", help="dataset cache (default $VAEKIT_DATA, else ~/.cache/vaekit)")
    d.add_argument("--limit", type=int, help="train on the first N training images only")
    t = p.add_argument_group("training")
    t.add_argument("--loss", help="elbo (default for vae; beta-VAE with --beta), iwae, capacity, vq (vqvae) or ae")
    t.add_argument("--beta", type=float, help="KL weight (default 1)")
    t.add_argument("--kl-warmup-epochs", type=float, help="raise the KL weight linearly from 0 to beta over N epochs")
    t.add_argument("--capacity", type=float, help="loss capacity: target KL C_max in nats (default 25)")
    t.add_argument("--capacity-epochs", type=float, help="loss capacity: epochs for C to rise from 0 to C_max (default 10)")
    t.add_argument("--gamma", type=float, help="loss capacity: weight of |KL - C| (default 1000)")
    t.add_argument("--commitment", type=float, help="loss vq: weight of the commitment term (default 0.25)")
    t.add_argument("--prior-epochs", type=int, help="vqvae: epochs of the code prior fitted after training (default 10)")
    t.add_argument("-L", "--mc-samples", "--k", type=int, dest="mc_samples",
                   help="samples of z per image: L for elbo, k for iwae (default 1)")
    t.add_argument("--kl", choices=KL_MODES, help="analytic (default) or mc")
    t.add_argument("--epochs", type=int, help="total epochs (default 10)")
    t.add_argument("--batch-size", type=int, help="default 128")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    t.add_argument("--schedule", choices=SCHEDULES, help="joint (default) or alternating (variational EM: E-steps "
                   "on the encoder, M-steps on the decoder)")
    t.add_argument("--e-steps", type=int, help="alternating: encoder steps per round (default 1)")
    t.add_argument("--m-steps", type=int, help="alternating: decoder steps per round (default 1)")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="constant (default) or iwae (3^i epochs at lr*10^(-i/7))")
    t.add_argument("--adam-eps", type=float, help="Adam epsilon (default 1e-8)")
    t.add_argument("--max-minutes", type=float, help="stop after the epoch in which this much training time has passed")
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--device", choices=DEVICES, help="auto (default), cpu or cuda")
    t.add_argument("--precision", choices=PRECISIONS, help="auto (default: bf16 where the hardware has bf16 units), fp32 or bf16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaekit", description="Variational auto-encoders: train, evaluate, sample.")
    sub = p.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a model into a run directory")
    tr.add_argument("--run-dir", help="where the run is written (default runs/<model>-<data>-<time>)")
    tr.add_argument("--resume", metavar="RUN", help="continue the run in RUN (only --epochs/--max-minutes/--device may change)")
    tr.add_argument("--preset", help="start from a named configuration: pytorch-examples, digits, iwae-paper (flags override it)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--no-report", action="store_true", help="do not write RUN/report.html at the end")
    _add_train_flags(tr)

    ev = sub.add_parser("eval", help="test-set negative ELBO, reconstruction and KL in nats/image")
    ev.add_argument("run")
    ev.add_argument("--split", default="test", choices=("test", "val"))
    ev.add_argument("-L", "--mc-samples", type=int, help="samples of z per image (default: as trained)")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--device", default="auto", choices=DEVICES)
    ev.add_argument("--data-dir", help="dataset cache, if not where the run found it")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--nll-k", type=int, metavar="K", help="also estimate log p(x) with K importance samples (papers: 5000)")
    ev.add_argument("--chunk-size", type=int, help="importance samples per image held in memory at once")
    ev.add_argument("--precision", choices=PRECISIONS, help="default: as trained for the loss terms, auto for --nll-k")

    sa = sub.add_parser("sample", help="decode z ~ N(0, I) into an image grid")
    sa.add_argument("run")
    sa.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    sa.add_argument("--out", help="PNG grid of images (default samples.png); CSV rows for a table (default samples.csv)")
    sa.add_argument("--temperature", type=float, default=1.0, help="scale of z's standard deviation")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--nrow", type=int, help="images per row (default: square)")
    sa.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNG (default 2)")
    sa.add_argument("--device", default="auto", choices=DEVICES)
    sa.add_argument("--label", type=int, help="conditional models (cvae): draw this class (default: every class in turn)")

    de = sub.add_parser("demo", help="the whole story: train a VAE on MNIST (else bundled digits), evaluate, sample")
    de.add_argument("--run-dir", default="runs/demo", help="default runs/demo")
    de.add_argument("--epochs", type=int, help="default 10 on MNIST, 100 on the bundled digits")
    de.add_argument("--data", choices=("mnist", "digits"), help="default: MNIST if it can be found or downloaded")
    de.add_argument("--data-dir", help="dataset cache (default $VAEKIT_DATA, else ~/.cache/vaekit)")
    de.add_argument("--device", default="auto", choices=DEVICES)
    de.add_argument("--no-progress", action="store_true")
    _add_figure_commands(sub)
    sub.add_parser("list", help="the registered models, losses, architectures, likelihoods and data sources")
    return p


def _train(args) -> int:
    from .train import fit

    if args.resume:
        from .checkpoint import load_config

        run_dir = Path(args.resume)
        config = config_from_args(args, base=load_config(run_dir))
        fit(config, run_dir, resume=True, progress=not args.no_progress)
    else:
        from .presets import get_preset

        config = config_from_args(args, base=get_preset(args.preset) if args.preset else None)
        run_dir = Path(args.run_dir or f"runs/{config.model.model}-{config.data.source}-{time.strftime('%Y%m%d-%H%M%S')}")
        fit(config, run_dir, progress=not args.no_progress)
    if not args.no_report:
        from .report import write_report

        write_report(run_dir)
    print(f"run saved in {run_dir}")
    return 0


def _eval(args) -> int:
    from .evaluate import evaluate_run

    r = evaluate_run(args.run, args.split, args.mc_samples, args.device, args.data_dir, args.seed,
                     args.nll_k, args.chunk_size, args.precision)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['run']} ({r['model']}, epoch {r['epoch']}), {r['split']} set of {r['n']} images, "
          f"L={r['mc_samples']}:\n  {r['loss_name']} loss {r['loss']:.2f} nats/image  (recon {r['recon']:.2f}, kl {r['kl']:.2f})")
    if "likelihood" in r:
        ll = r["likelihood"]
        print(f"  -log p(x) {ll['nll']:.2f} +- {ll['nll_se']:.2f} nats/image (k={ll['k']}), {ll['bits_per_dim']:.4f} bits/dim; "
              f"-ELBO {ll['neg_elbo']:.2f} (recon {ll['recon']:.2f}, kl {ll['kl']:.2f}); "
              f"active units {ll['active_units']}/{ll['latent_dim']}; {ll['seconds']:.1f} s")
    if "codes" in r:
        c = r["codes"]
        print(f"  codebook perplexity {c['perplexity']:.1f} of {c['codebook_size']} codes ({c['dead_codes']} dead); "
              f"-log p(x) <= {c['nll_bound']:.2f} nats/image (recon {c['recon']:.2f} + code prior {c['prior_nll']:.2f})")
    return 0


def _sample(args) -> int:
    from .sampling import sample_run

    out = sample_run(args.run, args.n, args.out, args.temperature, args.seed, args.nrow, args.scale, args.device, args.label)
    print(f"wrote {out}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.run_dir, epochs=args.epochs, source=args.data, data_dir=args.data_dir,
             device=args.device, progress=not args.no_progress)
    return 0


# ----------------------------------------------------------------------------- figures and the run report

# flag -> PlotOptions field; every flag defaults to None, so only what is given overrides the option's default
_PLOT_FIELDS = {
    "n": "n_samples", "temperature": "temperature", "n_recon": "n_reconstructions", "range": "z_range",
    "resolution": "resolution", "steps": "steps", "dims": "dims", "projection": "projection",
    "max_points": "max_points", "max_rows": "max_rows", "n_pairs": "n_pairs", "pair": "pairs",
    "great_circle": "great_circle", "seed": "seed", "dpi": "dpi", "label": "label",
}


def _add_figure_flags(p: argparse.ArgumentParser, kinds: bool = True) -> None:
    if kinds:
        p.add_argument("--kind", nargs="+", metavar="K", help="figure kinds (default: all): samples, reconstructions, "
                       "manifold, traversal (alias strip), scatter, interpolate, curves")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="default cpu")
    p.add_argument("--data-dir", help="dataset cache, if not where the run found it")
    f = p.add_argument_group("figure options")
    f.add_argument("-n", type=int, help="samples: how many (default 64)")
    f.add_argument("--temperature", type=float, help="samples: z ~ N(0, T^2 I) (default 1)")
    f.add_argument("--n-recon", type=int, help="reconstructions: test images shown (default 16)")
    f.add_argument("--range", type=float, nargs=2, metavar=("LO", "HI"), help="manifold, traversal: span of z (default -5 5)")
    f.add_argument("--resolution", type=int, help="manifold: images per side (default 20)")
    f.add_argument("--steps", type=int, help="traversal, interpolate: images per row (default 21 for a 1-D strip, else 11; 10)")
    f.add_argument("--dims", type=int, nargs=2, metavar=("I", "J"), help="manifold, scatter --projection dims: the two z "
                   "shown when latent_dim > 2 (default: the two most used)")
    f.add_argument("--projection", help="scatter for latent_dim > 2: pca (default), tsne or dims")
    f.add_argument("--max-points", type=int, help="scatter: at most this many test points (default 10000)")
    f.add_argument("--max-rows", type=int, help="traversal: rows shown, most used dimensions first (default 32)")
    f.add_argument("--n-pairs", type=int, help="interpolate: pairs of test images (default 5: digits 0->1, 2->3, ...)")
    f.add_argument("--pair", type=int, nargs=2, action="append", metavar=("I", "J"),
                   help="interpolate: test images I and J (repeatable)")
    f.add_argument("--great-circle", action="store_true", default=None, help="interpolate: also along the great circle")
    f.add_argument("--label", type=int, help="conditional models (cvae): decode given this class (default: samples "
                   "show every class, other figures class 0)")
    f.add_argument("--seed", type=int, help="default 0")
    f.add_argument("--dpi", type=int, help="pixels per inch of the PNGs (default 100)")


def _add_figure_commands(sub) -> None:
    pl = sub.add_parser("plot", help="figures of a saved run: samples, manifold, scatter, ... as PNG files")
    pl.add_argument("run")
    pl.add_argument("--out", help="folder for KIND.png (default RUN/figures)")
    _add_figure_flags(pl)
    co = sub.add_parser("compare", help="the same figures for several runs side by side (e.g. an AE and a VAE)")
    co.add_argument("runs", nargs="+", metavar="RUN")
    co.add_argument("--out", default="compare", help="folder for compare-KIND.png (default ./compare)")
    _add_figure_flags(co)
    rp = sub.add_parser("report", help="RUN/report.html: config, final metrics and every figure, in one offline page")
    rp.add_argument("run")
    rp.add_argument("--out", help="HTML file (default RUN/report.html)")
    _add_figure_flags(rp, kinds=False)


def _plot_options(args):
    from .plots import PlotOptions

    return PlotOptions(**{field: getattr(args, flag) for flag, field in _PLOT_FIELDS.items() if getattr(args, flag) is not None})


def _plot(args) -> int:
    from .plots import plot_run

    plot_run(args.run, args.kind, args.out, _plot_options(args), device=args.device, data_dir=args.data_dir)
    return 0


def _compare(args) -> int:
    from .plots import compare_runs

    compare_runs(args.runs, args.kind, args.out, _plot_options(args), device=args.device, data_dir=args.data_dir)
    return 0


def _report(args) -> int:
    from .report import write_report

    write_report(args.run, args.out, _plot_options(args), device=args.device, data_dir=args.data_dir)
    return 0


def _list(args) -> int:
    from .registry import list_components

    rows = list_components()
    width = max(len(name) for _, name, _ in rows)
    for i, (kind, name, about) in enumerate(rows):
        if i == 0 or kind != rows[i - 1][0]:
            print(f"{chr(10) if i else ''}{kind}:")
        print(f"  {name:<{width}}  {about}")
    return 0


COMMANDS = {"train": _train, "eval": _eval, "sample": _sample, "demo": _demo,
            "plot": _plot, "compare": _compare, "report": _report, "list": _list}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except VaekitError as e:
        print(f"vaekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaekit: interrupted; finished epochs are saved (continue with `vaekit train --resume RUN`)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
