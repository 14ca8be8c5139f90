"""The `vaekit` command: parse arguments -> config -> one library call. Nothing else.

The training and figure flags are generated from the config dataclasses (vaekit.cli.options), so their
help and defaults are those of the library.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..config.presets import PRESETS, get_preset
from ..config.schema import CHECKPOINTS, DEVICES, NLL_PRECISIONS, PRECISIONS, DataConfig, RunConfig, TrainConfig, flag_of, resumable_fields
from ..data.dataset import data_root
from ..data.sources import SOURCES, Arrays
from ..data.sources.prepared import prepare
from ..distributed import AnotherProcessFailed, die_with_parent, from_environment, lost_a_process, stop
from ..errors import VaekitError
from ..evaluation.evaluate import EvalOptions, evaluate_run
from ..models.family import LIMIT_VARIABLE, MAX_PARAMETERS
from ..outputs.demo import run_demo
from ..outputs.plots import PlotOptions, compare_runs, plot_run
from ..outputs.plots.render import ALIASES, KINDS
from ..outputs.report import write_report
from ..outputs.sampling import SampleOptions, sample_run
from ..plugins import import_modules
from ..registry import list_components, registries
from ..runtime import cpu_int8_is_faster, most_processes
from ..store.checkpoint import has_checkpoint, load_config
from ..training.fit import Interrupted, fit
from .options import add_config_flags, add_dataclass_flags, config_from_args, given


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line like every other vaekit error."""

    def error(self, message: str):
        print(f"vaekit: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="on an error, also print its details (e.g. the mirrors tried)")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE", help="import MODULE first: your own "
                   "components, registered as vaekit's are (repeatable; installed plugins, entry points of the group "
                   "vaekit.plugins, need no flag)")
    p.add_argument("--max-parameters", type=int, metavar="N", help="refuse to build a model of more than N weights "
                   f"and buffers, counted from its config before anything is allocated (default: {MAX_PARAMETERS:,}, "
                   f"or ${LIMIT_VARIABLE})")


def _checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="last", choices=CHECKPOINTS,
                   help="the weights to use: last (the last finished epoch) or best (the lowest validation loss) (default: last)")
    p.add_argument("--allow-changed-data", action="store_true",
                   help="use the run's data even if its files changed since training (the splits or labels may differ)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vaekit", description="Variational auto-encoders: train, evaluate, sample, see the latent space.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    tr = sub.add_parser("train", help="train a model into a run directory")
    tr.add_argument("--run-dir", help="where the run is written (default: runs/<model>-<data>-<time>)")
    tr.add_argument("--resume", metavar="RUN", help="continue the run in RUN (only "
                    + ", ".join(flag_of(TrainConfig, name) for name in resumable_fields()) + " may change)")
    tr.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine (launches "
                    "torchrun --standalone --nproc-per-node N; for several machines run torchrun -m vaekit train)")
    tr.add_argument("--config", metavar="FILE", help="start from a config JSON, e.g. another run's config.json "
                    "(flags override it)")
    tr.add_argument("--preset", help=f"start from a named configuration: {', '.join(PRESETS)} (flags override it)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress bar (default: only when stderr is a terminal; else one line per epoch)")
    tr.add_argument("--tensorboard", action="store_true", help="also log each epoch to RUN/tensorboard/ (metrics, "
                    "samples, reconstructions, the posterior means' histogram); needs pip install 'vaekit[tensorboard]'")
    _common(tr)
    add_config_flags(tr)

    ev = sub.add_parser("eval", help="test-set objective, -ELBO, reconstruction and KL in nats per example")
    ev.add_argument("run", help="a run directory")
    ev.add_argument("--split", default="test", choices=("test", "val"), help="the split to score (default: test)")
    ev.add_argument("-L", "--mc-samples", type=int, help="samples of z per example (default: as trained)")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--device", default="auto", choices=DEVICES, help="where to compute (default: auto)")
    ev.add_argument("--data-dir", help="dataset cache, if not where the run found it")
    ev.add_argument("--seed", type=int, default=0, help="seed of the z samples (default: 0)")
    ev.add_argument("--nll-k", type=int, metavar="K", help="also estimate log p(x) with K importance samples (papers: 5000)")
    ev.add_argument("--chunk-size", type=int, help="importance samples per example held in memory at once (default: "
                    "625: a call holds the samples of 4 images, 2,500 rows)")
    ev.add_argument("--precision", choices=PRECISIONS, help="of the loss terms (default: as trained), and of --nll-k "
                    "unless --nll-precision says otherwise")
    ev.add_argument("--nll-precision", choices=NLL_PRECISIONS, help="of the --nll-k estimate (default: auto: bf16 "
                    "where this machine runs it faster, else fp32); int8: the compiled estimate's decoder products in "
                    "int8 on a CPU (opt-in: faster with VNNI or AMX, and moves -log p(x) by about 0.02 nats)")
    ev.add_argument("--limit", type=int, metavar="N", help="score the first N examples of the split only (a quick "
                    "estimate; its standard error says how quick) (default: all)")
    ev.add_argument("--limit-random", action="store_true", help="--limit: a random N of the split, drawn with --seed, "
                    "instead of the first N")
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="the --nll-k estimate's "
                    "progress with the time left (default: a bar on a terminal, else a line per 10%% after 10 s)")
    _checkpoint_flag(ev)
    _common(ev)

    sa = sub.add_parser("sample", help="decode z ~ p(z) into an image grid (a table: CSV rows)")
    sa.add_argument("run", help="a run directory")
    sa.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    sa.add_argument("--out", help="PNG grid of images (default: samples.png); CSV rows for a table (default: samples.csv)")
    sa.add_argument("--temperature", type=float, default=1.0, help="scale of z's spread (default: 1)")
    sa.add_argument("--noise", action=argparse.BooleanOptionalAction, default=None,
                    help="write x ~ p(x|z) rather than the mean of p(x|z) (default: on for tables, off for images)")
    sa.add_argument("--seed", type=int, default=0, help="default: 0")
    sa.add_argument("--nrow", type=int, help="images per row (default: square)")
    sa.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNG (default: 2)")
    sa.add_argument("--device", default="auto", choices=DEVICES, help="where to compute (default: auto)")
    sa.add_argument("--label", type=int, help="conditional models (cvae): draw this class (default: every class in turn)")
    sa.add_argument("--force", action="store_true", help="replace --out if it exists (default: an existing file is refused)")
    _checkpoint_flag(sa)
    _common(sa)

    de = sub.add_parser("demo", help="the whole story: train a VAE on MNIST (else bundled digits), evaluate, sample")
    de.add_argument("--run-dir", default="runs/demo", help="default: runs/demo")
    de.add_argument("--epochs", type=int, help="default: 10 on MNIST, 100 on the bundled digits")
    de.add_argument("--data", choices=("mnist", "digits"), help="default: MNIST if it can be found or downloaded")
    de.add_argument("--data-dir", help="dataset cache (default: $VAEKIT_DATA, else ~/.cache/vaekit)")
    de.add_argument("--device", default="auto", choices=DEVICES, help="where to compute (default: auto)")
    de.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress bar (default: only when stderr is a terminal)")
    _common(de)
    _add_figure_commands(sub)
    pr = sub.add_parser("prepare", help="write an image source once as 8-bit rows that training reads a batch at a "
                        "time (data larger than memory; one copy for all processes)")
    pr.add_argument("--data", required=True, help="the source: folder, npy, mnist, fashion-mnist, ...")
    pr.add_argument("--path", help="the source's file or folder (folder, npy)")
    pr.add_argument("--image-size", type=int, help="folder: resize images to this side")
    pr.add_argument("--data-dir", help="dataset cache for downloaded sources (default: $VAEKIT_DATA or ~/.cache/vaekit)")
    pr.add_argument("--out", required=True, help="the new folder to write; train with --data prepared --path OUT")
    _common(pr)

    ex = sub.add_parser("export", help="the run's encoder and decoder as ONNX files (checked with onnxruntime) and a "
                        "JSON file saying what each input and output is")
    ex.add_argument("run", help="the run folder")
    ex.add_argument("--format", default="onnx", choices=("onnx", "hf"), help="onnx: encoder.onnx, decoder.onnx and "
                    "vaekit-onnx.json; hf: a Hugging Face-style folder (model.safetensors, config.json, README.md model "
                    "card, samples.png) that vaekit.from_pretrained loads (default: onnx)")
    ex.add_argument("--out", required=True, help="a new (or empty) folder")
    ex.add_argument("--push-to", metavar="REPO_ID", help="hf: also upload the folder to this hub repository "
                    "(needs pip install 'vaekit[hub]' and a token: huggingface-cli login)")
    _checkpoint_flag(ex)
    _common(ex)

    xp = sub.add_parser("explore", help="a local web page to move through a run's latent space and watch the decoder "
                        "answer (with RUN_B: both runs side by side, one pointer)")
    xp.add_argument("run", help="a run directory")
    xp.add_argument("run_b", nargs="?", metavar="RUN_B", help="a second run, shown beside the first (e.g. an AE beside a VAE)")
    xp.add_argument("--host", default="127.0.0.1", help="the address to serve on (default: 127.0.0.1, this machine only)")
    xp.add_argument("--port", type=int, default=8765, help="default: 8765 (0: any free port)")
    xp.add_argument("--open", action="store_true", help="open the page in the default browser")
    xp.add_argument("--device", default="cpu", choices=DEVICES, help="where to decode (default: cpu)")
    xp.add_argument("--data-dir", help="dataset cache, if not where the run found it")
    _checkpoint_flag(xp)
    _common(xp)

    ls = sub.add_parser("list", help="every registered component (" + ", ".join(registries()) + "), each with one line")
    _common(ls)
    return p


def _add_figure_flags(p: argparse.ArgumentParser, kinds: bool = True) -> None:
    if kinds:
        p.add_argument("--kind", nargs="+", metavar="K", help="figure kinds (default: all): " + ", ".join(KINDS)
                       + "".join(f"; {alias} for {kind}" for alias, kind in ALIASES.items()))
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where to compute (default: cpu)")
    p.add_argument("--data-dir", help="dataset cache, if not where the run found it")
    _checkpoint_flag(p)
    _common(p)
    add_dataclass_flags(p.add_argument_group("figure options"), PlotOptions, dest_prefix="plot.")


def _add_figure_commands(sub) -> None:
    pl = sub.add_parser("plot", help="figures of a saved run: samples, manifold, scatter, ... as PNG files")
    pl.add_argument("run", help="a run directory")
    pl.add_argument("--out", help="folder for KIND.png (default: RUN/figures)")
    _add_figure_flags(pl)
    co = sub.add_parser("compare", help="the same figures for several runs side by side (e.g. an AE and a VAE)")
    co.add_argument("runs", nargs="+", metavar="RUN")
    co.add_argument("--out", default="compare", help="folder for compare-KIND.png (default: ./compare)")
    _add_figure_flags(co)
    rp = sub.add_parser("report", help="RUN/report.html: config, final metrics and every figure, in one offline page")
    rp.add_argument("run", help="a run directory")
    rp.add_argument("--out", help="HTML file (default: RUN/report.html)")
    _add_figure_flags(rp, kinds=False)


def _train(args) -> int:
    if args.nproc is not None and args.nproc < 1:
        raise VaekitError(f"--nproc {args.nproc} is impossible: train with at least 1 process")
    if args.nproc is not None and args.nproc > 1:
        most, what = most_processes(getattr(args, "train.device", None) or "auto")
        if args.nproc > most:
            raise VaekitError(f"--nproc {args.nproc} is more than the {most} {what}: use at most {most} (several "
                              "machines: run torchrun -m vaekit train on each)")
        if not from_environment().distributed:   # the command itself, not one of the processes it starts
            argv = list(args.argv)
            if not args.resume and not args.run_dir:   # the processes must agree on the default name: chosen here
                argv += ["--run-dir", str(_default_run_dir(_new_config(args)))]
            return _launch(args.nproc, argv)
    world = from_environment()
    if world.distributed:
        die_with_parent()   # the launcher killed: this process stops too, rather than wait for it for good
    try:
        code = _train_here(args, world)
    except BaseException as e:
        lost = lost_a_process(e) if world.distributed else None
        if lost is not None:
            # the group cannot be left cleanly with a process gone; the launcher's SIGTERM that follows must not
            # turn this line into "interrupted"
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            run = args.resume or args.run_dir
            raise VaekitError(f"process {world.rank}: another training process stopped ({str(lost).splitlines()[0].split('] ')[-1][:80]}); "
                              f"the run is kept at its last checkpoint: continue with `vaekit train --resume {run}`") from None
        stop(world, clean=False)
        raise
    stop(world)
    return code


def _new_config(args) -> RunConfig:
    if args.config and args.preset:
        raise VaekitError("--config and --preset both give a starting configuration; pass one of them")
    base = RunConfig.load(args.config) if args.config else get_preset(args.preset) if args.preset else None
    return config_from_args(args, base=base)


def _default_run_dir(config: RunConfig) -> Path:
    return Path(f"runs/{config.model.model}-{config.data.source}-{time.strftime('%Y%m%d-%H%M%S')}")


def _launch(nproc: int, argv: list[str]) -> int:
    """`vaekit train --nproc N ...`: what `torchrun --standalone --nproc-per-node N -m vaekit train ...` does
    (vaekit.training.launch, a process of its own: torch's rendezvous store can abort the interpreter that ran it)."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    return subprocess.run([sys.executable, "-m", "vaekit.training.launch", str(nproc), *rest]).returncode


def _train_here(args, world) -> int:
    if args.resume:
        ignored = [flag for flag, value in (("--run-dir", args.run_dir), ("--preset", args.preset), ("--config", args.config))
                   if value]
        if ignored:
            raise VaekitError(f"{' and '.join(ignored)} cannot be used with --resume, which continues RUN with its own "
                              "config in its own folder; drop them")
        run_dir = Path(args.resume)
        config = config_from_args(args, base=load_config(run_dir))
        fit(config, run_dir, resume=True, progress=args.progress, hooks=_hooks(args, run_dir, world))
    else:
        config = _new_config(args)
        if world.distributed and not args.run_dir:
            raise VaekitError("with several processes, pass --run-dir (each process must write to the same folder)")
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(config)
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0 and has_checkpoint(run_dir):
            # torchrun --max-restarts started this command again after a process failed: go on from the last
            # checkpoint (the run's own config; the options may change only as --resume allows)
            config = config_from_args(args, base=load_config(run_dir))
            fit(config, run_dir, resume=True, progress=args.progress, hooks=_hooks(args, run_dir, world))
        else:
            fit(config, run_dir, progress=args.progress, hooks=_hooks(args, run_dir, world))
    if not world.main:
        return 0
    if config.train.report:   # the run's own choice (its config.json), unless this command gave --report/--no-report
        write_report(run_dir)
    print(f"run saved in {run_dir}")
    return 0


def _hooks(args, run_dir: Path, world) -> list:
    """The epoch hooks the flags ask for (process 0 alone logs)."""
    if not args.tensorboard or not world.main:
        return []
    from ..integrations.tensorboard import TensorBoard  # noqa: PLC0415  (torch.utils.tensorboard only when asked for)

    return [TensorBoard(run_dir)]


def _eval(args) -> int:
    r = evaluate_run(args.run, EvalOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalOptions)}))
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    weights = "" if args.checkpoint == "last" else f", {args.checkpoint} weights"
    which = f"{r['split']} set of {r['n']:,} examples" if r["n"] == r["split_size"] else \
        f"{'a random' if args.limit_random else 'the first'} {r['n']:,} of the {r['split_size']:,} {r['split']} examples"
    print(f"{r['run']} ({r['model']}, epoch {r['epoch']}{weights}), {which}, L={r['mc_samples']}, in nats per example:")
    elbo = f"   -ELBO {r['neg_elbo']:.2f} (recon {r['recon']:.2f} + kl {r['kl']:.2f})" if "neg_elbo" in r else \
        f"   (recon {r['recon']:.2f})"
    print(f"  objective ({r['loss_name']}) {r['objective']:.2f}{elbo}")
    if "likelihood" in r:
        ll = r["likelihood"]
        print(f"  -log p(x) {ll['nll']:.2f} +- {ll['nll_se']:.2f} (k={ll['k']}), {ll['bits_per_dim']:.4f} bits/dim; "
              f"-ELBO {ll['neg_elbo']:.2f} (recon {ll['recon']:.2f}, kl {ll['kl']:.2f}); "
              f"active units {ll['active_units']}/{ll['latent_dim']}; {ll['precision']}, {ll['seconds']:.1f} s")
        if args.nll_precision is None and ll["seconds"] > 10 and ll["precision"] != "int8" and cpu_int8_is_faster():
            print("  note: this CPU runs int8 products faster: --nll-precision int8 estimates faster (it moves -log p(x) "
                  "by about 0.02 nats, against fp32)")
    if "codes" in r:
        c = r["codes"]
        print(f"  codebook perplexity {c['perplexity']:.1f} of {c['codebook_size']} codes ({c['dead_codes']} dead); "
              f"-log p(x) <= {c['nll_bound']:.2f} (recon {c['recon']:.2f} + code prior {c['prior_nll']:.2f})")
    return 0


def _sample(args) -> int:
    sample_run(args.run, SampleOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SampleOptions)}))
    return 0


def _demo(args) -> int:
    run_demo(args.run_dir, epochs=args.epochs, source=args.data, data_dir=args.data_dir,
             device=args.device, progress=args.progress)
    return 0


def _plot_options(args) -> PlotOptions:
    return PlotOptions(**given(args, PlotOptions, "plot."))


def _plot(args) -> int:
    plot_run(args.run, args.kind, args.out, _plot_options(args), device=args.device, data_dir=args.data_dir,
             checkpoint=args.checkpoint, allow_changed_data=args.allow_changed_data)
    return 0


def _compare(args) -> int:
    compare_runs(args.runs, args.kind, args.out, _plot_options(args), device=args.device, data_dir=args.data_dir,
                 checkpoint=args.checkpoint, allow_changed_data=args.allow_changed_data)
    return 0


def _report(args) -> int:
    write_report(args.run, args.out, _plot_options(args), device=args.device, data_dir=args.data_dir,
                 checkpoint=args.checkpoint, allow_changed_data=args.allow_changed_data)
    return 0


def _prepare(args) -> int:
    cfg = DataConfig(args.data, path=args.path, image_size=args.image_size, data_dir=args.data_dir)
    if args.data not in SOURCES or args.data == "prepared":
        raise VaekitError(f"--data {args.data!r} cannot be prepared; choose one of "
                          f"{', '.join(k for k in SOURCES if k != 'prepared')}")
    arrays = Arrays(*SOURCES[args.data].load(data_root(args.data_dir), True, 30, cfg))
    meta = prepare(arrays, Path(args.out), args.data)
    size = (meta["train"] + meta["test"]) * math.prod(meta["shape"]) / 1e6
    test = f" and {meta['test']:,} test" if meta["test"] else ""
    print(f"prepared {meta['train']:,} training{test} images of {'x'.join(map(str, meta['shape']))} in {args.out} "
          f"({size:,.1f} MB); train with --data prepared --path {args.out}")
    return 0


def _export(args) -> int:
    if args.push_to and args.format != "hf":
        raise VaekitError("--push-to uploads a Hugging Face-style folder: add --format hf")
    if args.format == "hf":
        from ..integrations.pretrained import push_to_hub, save_pretrained  # noqa: PLC0415

        out = save_pretrained(args.run, args.out, checkpoint=args.checkpoint)
        print(f"saved {args.run} to {out}: model.safetensors, config.json, README.md; load it with "
              f"vaekit.from_pretrained({str(out)!r})")
        if args.push_to:
            print(f"pushed to {push_to_hub(out, args.push_to)}")
        return 0
    from ..integrations.export import export_onnx  # noqa: PLC0415  (torch.onnx and onnxruntime only for this command)

    out = export_onnx(args.run, args.out, checkpoint=args.checkpoint)
    print(f"exported {args.run} to {out}: encoder.onnx, decoder.onnx, vaekit-onnx.json")
    return 0


def _explore(args) -> int:
    if not 0 <= args.port <= 65535:
        raise VaekitError(f"--port {args.port} is impossible: use 1 to 65535 (0: any free port)")
    from ..explore import explore  # noqa: PLC0415  (the web server only for this command)

    explore(args.run, args.run_b, host=args.host, port=args.port, open_browser=args.open, device=args.device,
            data_dir=args.data_dir, checkpoint=args.checkpoint, allow_changed_data=args.allow_changed_data,
            log=lambda line: print(line, flush=True))
    return 0


def _list(args) -> int:
    rows = list_components()
    width = max(len(name) for _, name, _ in rows)
    for i, (kind, name, about) in enumerate(rows):
        if i == 0 or kind != rows[i - 1][0]:
            print(f"{chr(10) if i else ''}{kind}:")
        print(f"  {name:<{width}}  {about}")
    return 0


COMMANDS = {"train": _train, "eval": _eval, "sample": _sample, "demo": _demo,
            "plot": _plot, "compare": _compare, "report": _report, "list": _list,
            "prepare": _prepare, "export": _export, "explore": _explore}


def os_error(e: OSError) -> str:
    """An OSError as one line that says what to do."""
    where = f" {e.filename}" if e.filename else ""
    fixes = {errno.ENOSPC: f"the disk is full writing{where}: free some space and run again",
             errno.EDQUOT: f"the disk quota is used up writing{where}: free some space and run again",
             errno.EROFS: f"{where.strip() or 'the folder'} is on a read-only file system; choose a writable folder",
             errno.EACCES: f"permission denied:{where}; choose a folder you may write to",
             errno.EPERM: f"operation not permitted:{where}; choose a folder you may write to",
             errno.ENOTDIR: f"a part of{where} is a file, not a folder; choose another path",
             errno.EISDIR: f"{where.strip()} is a folder; give a file name",
             errno.ENOENT: f"{where.strip()} does not exist"}
    return fixes.get(e.errno, f"{e.strerror or e}{':' + where if where else ''}")


def _terminate(signum, frame):
    raise KeyboardInterrupt   # outside the training loop SIGTERM stops like Ctrl-C: one line, exit 143


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    terminated, previous = [], None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum) or _terminate(signum, frame))
    try:
        return _run(args, terminated)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_process() -> bool:
    try:
        return from_environment().main
    except VaekitError:
        return True


@contextlib.contextmanager
def _parameter_limit(n: int | None):
    """--max-parameters N: $VAEKIT_MAX_PARAMETERS for the command (and the training processes it starts), restored
    after it (main() may run in a caller's process)."""
    if n is None:
        yield
        return
    if n < 1:
        raise VaekitError(f"--max-parameters {n} is impossible: give a number of parameters >= 1")
    before = os.environ.get(LIMIT_VARIABLE)
    os.environ[LIMIT_VARIABLE] = str(n)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LIMIT_VARIABLE, None)
        else:
            os.environ[LIMIT_VARIABLE] = before


def _run(args, terminated: list) -> int:
    try:
        with _parameter_limit(args.max_parameters):
            import_modules(args.imports)
            return COMMANDS[args.command](args)
    except AnotherProcessFailed:
        return 2   # that process has printed the reason
    except VaekitError as e:
        print(f"vaekit: error: {e}", file=sys.stderr)
        if args.verbose and e.details:
            print(e.details, file=sys.stderr)
        return 2
    except Interrupted as e:
        if not _main_process():
            return 128 + e.signum   # process 0 says where the run stopped
        name = signal.Signals(e.signum).name
        print(f"vaekit: stopped by {name} {e.where}; the run is saved there: continue with "
              f"`vaekit train --resume {e.run_dir}`", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("vaekit: interrupted; nothing past the last checkpoint was saved", file=sys.stderr)
        return 143 if terminated else 130
    except OSError as e:
        print(f"vaekit: error: {os_error(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("vaekit: error: not enough memory for this request; ask for fewer or smaller things", file=sys.stderr)
        return 2
    except RuntimeError as e:   # torch reports a failed allocation as a RuntimeError
        if "allocate" not in str(e) and "out of memory" not in str(e):
            raise
        print(f"vaekit: error: not enough memory ({str(e).splitlines()[0][:120]}); ask for fewer or smaller things",
              file=sys.stderr)
        return 2


def run() -> None:
    """The `vaekit` command (and `python -m vaekit`): main(), then exit with its code. Once the work is done and
    saved, the interpreter's teardown is skipped where it costs: in one of torchrun's processes, where torch's
    process-group threads can abort it ("terminate called without an active exception", exit 134), and after a
    torch.compile, whose modules took about 1 s to free (measured on this project's 2-core AMD EPYC). The exit
    handlers still run in the second case (the compiler's workers are shut down)."""
    code = main()
    try:
        distributed = from_environment().distributed
    except VaekitError:
        distributed = False   # main() has said what is wrong with the environment
    if distributed or "torch._dynamo" in sys.modules:
        if not distributed:
            atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
