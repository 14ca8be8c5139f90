"""fit(): the one training loop. Adam, validation each epoch, metrics.jsonl, a checkpoint every
epoch (and best/ weights), exact resume on CPU (weights, optimiser, epoch and both RNG streams).

fit() reads as set-up, a loop over epochs, and what ends each epoch; each is a function below.
Nothing here knows which model it trains: what is special about a model is in its hooks
(vaekit.models.family.LatentModel).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..accel.adam import FusedAdam, make_adam
from ..accel.aot import AheadOfTime, ahead_of_time_possible, config_material
from ..accel.compiled import should_compile
from ..config.schema import RunConfig, resumable_fields
from ..data.dataset import Dataset, DataSplits, check_unchanged, fingerprint, load_data, shard_batches
from ..distributed import World, agree, from_environment, start
from ..errors import CheckpointError, DataError
from ..evaluation.evaluate import evaluate
from ..models.family import LatentModel, build_model
from ..models.objectives import LossContext, get_loss
from ..runtime import idle_cpus, resolve_device, resolve_precision, resolve_threads, warm_up_compiler
from ..store.checkpoint import BEST, has_checkpoint, load_config, load_trainer_state, load_weights, save_best, save_checkpoint
from ..store.metrics import METRICS, append_metric, read_metrics, summary, write_metrics
from ..store.rundir import LOCK, MARKER, RunLock, check_new_run_dir, mark
from .guard import DivergedError, Guard, step_is_finite, weights_finite
from .progress import Progress
from .resolve import check_applicable, check_names, check_support, differences, plugin_modules, reads_of, resolve
from .schedules import batch_size_at, batch_sizes, hold_fixed, learning_rate, steps_in
from .signals import Interrupted, stop_on_signals
from .step import TERMS, Step
from .threads import Threads

READ_EVERY = 64   # steps between the host's reads of the steps' sums and finite flags: no wait for the device per step
RESUMABLE = resumable_fields()   # what a resumed run may change (TrainConfig fields marked resumable)
Hook = Callable[[dict, torch.nn.Module], "str | None"]  # after each epoch: (record, model) -> why to stop, or None


@dataclass
class FitResult:
    model: torch.nn.Module
    config: RunConfig
    history: list[dict]
    run_dir: Path
    stopped: str | None = None   # why training ended before config.train.epochs, if it did


@dataclass
class Session:
    """What one call of fit() trains with: the run's inputs (rebuilt from its folder on a resume), its progress (saved
    in every checkpoint and restored by a resume: Progress), and this call's own bookkeeping."""

    config: RunConfig
    run_dir: Path
    model: LatentModel
    optimizer: torch.optim.Optimizer | FusedAdam
    generator: torch.Generator       # shuffling + dynamic binarisation
    train: Dataset
    val: Dataset | None
    precision: str                   # fp32 or bf16: what 'auto' resolved to on this machine
    progress: Progress = field(default_factory=Progress)   # where training stands: saved and restored (progress.py)
    history: list[dict] = field(default_factory=list)      # metrics.jsonl's lines so far
    state: dict | None = None        # the trainer state of the last checkpoint this call wrote
    created: list[Path] = field(default_factory=list)   # what a failed new run removes again
    lock: RunLock | None = None      # the run's lock (process 0), held while this call trains the run
    guard: Guard | None = None       # the NaN/Inf guard (skips, roll-backs, the learning-rate scale)
    stop_signal: int = 0             # SIGINT or SIGTERM received: save and stop after this step
    step: Step | None = None         # forward + loss + backward of one batch, eager or compiled
    world: World = field(default_factory=World)   # this process among the training processes (torchrun)
    data_name: str = ""
    hook_stop: str = ""              # why a hook asked training to stop (empty: go on)
    threads: Threads | None = None   # the intra-op threads, following the machine while training


def fit(config: RunConfig, run_dir: str | Path, resume: bool = False, data: DataSplits | None = None,
        hooks: list[Hook] = (), progress: bool | None = None, log: Callable[[str], None] = print) -> FitResult:
    """Train `config` into `run_dir`; with resume, continue the run saved there. progress: a progress bar
    (None: only when stderr is a terminal; elsewhere one line per epoch). A new run with epochs 0 saves the untrained
    model as its epoch 0, from which a resume trains exactly as a run begun with more epochs.

    Under torchrun (RANK, WORLD_SIZE in the environment) every process calls fit() alike: they join one process
    group, each computes its rows of every global batch, and process 0 alone writes the run and logs."""
    world = start(from_environment(), config.train.device)
    if not world.main:
        log, progress = (lambda line: None), False
    with contextlib.ExitStack() as held:   # what this call holds (the run's lock, the caller's threads), given back once
        held.callback(torch.set_num_threads, torch.get_num_threads())   # set_up picks the training's own threads
        s = set_up(config, Path(run_dir), resume, data, log, world, held)
        stopped = _train(s, resume, hooks, sys.stderr.isatty() if progress is None else progress, log)
    s.model.eval()
    return FitResult(s.model, s.config, s.history, s.run_dir, stopped)


def _train(s: Session, resume: bool, hooks, progress: bool, log) -> str | None:
    """The epochs, then the model's after-training work; why training stopped early, if it did. A new run that fails
    before its first checkpoint leaves nothing behind."""
    started, stopped = time.perf_counter(), None
    try:
        if not resume and s.progress.start == s.config.train.epochs:   # --epochs 0: the untrained model is the run's epoch 0
            s.state = _state(s, 0)
            if s.world.main:
                save_checkpoint(s.run_dir, s.model, s.optimizer, s.state)
        with stop_on_signals(s):
            for epoch in range(s.progress.start, s.config.train.epochs):
                record = train_epoch(s, epoch, progress)
                end_epoch(s, record, hooks, log)
                stopped = stop_reason(s, epoch, started) if s.world.main else None   # process 0's clock decides
                if s.world.any(stopped is not None, s.model.device):
                    stopped = stopped or "stopped by process 0"
                    log(stopped)
                    break
        finish(s, log)
    except BaseException:
        _remove_unfinished(s)
        raise
    return stopped


def set_up(config: RunConfig, run_dir: Path, resume: bool, data: DataSplits | None, log, world: World,
           held: contextlib.ExitStack) -> Session:
    """Check everything, then create the run directory (a new run) or restore the saved state (resume). With
    several processes, process 0 alone creates and locks the folder, and a failure in any process is every
    process's error (none waits for another that has given up)."""
    s, error = None, None
    try:
        s = _set_up(config, run_dir, resume, data, log, world, held)
    except BaseException as e:
        error = e
    try:
        agree(world, error)
    except BaseException:
        if s is not None:   # this process got through; another did not
            _remove_unfinished(s)
        raise
    # DistributedDataParallel's set-up is a collective: only once every process is known to be ready
    tcfg = s.config.train
    steps_left = steps_in(tcfg, len(s.train), s.progress.start, tcfg.epochs)
    compiled = should_compile(tcfg.compile, steps_left, world.distributed)
    # The kind of step follows from the config and the machine, never from what the cache holds: a compiled step is
    # the one built ahead of time where that is possible (loaded from the cache, else built there: the cache only
    # saves the build). auto resumes a run with the kind of step it had, so that it goes on exactly.
    if tcfg.compile == "auto" and s.progress.ahead_of_time is not None:
        compiled = compiled or s.progress.ahead_of_time
        ahead_wanted = s.progress.ahead_of_time
    else:
        ahead_wanted = compiled
    ahead = AheadOfTime(config_material(s.config), log=log) \
        if ahead_wanted and ahead_of_time_possible(s.config, world) else None
    s.step = Step(s.model, get_loss(tcfg.loss), s.precision, batch_sizes(tcfg, s.progress.start, tcfg.epochs), compiled, log,
                  world, optimizer=s.optimizer if tcfg.schedule == "joint" else None,   # alternating: hold_fixed between
                  ahead=ahead)
    s.threads = Threads(tcfg.threads, s.model.device, s.world.local_size, compiled=compiled, log=log)
    if s.progress.start < tcfg.epochs:
        log(banner(s))
    elif resume:
        log(f"nothing to train: {run_dir} has finished its {tcfg.epochs} epochs; raise --epochs to train more")
    else:
        log(f"--epochs 0: {run_dir} keeps the untrained model as its epoch 0 (a baseline for eval and sample); train "
            f"it with `vaekit train --resume {run_dir} --epochs N`")
    return s


def _set_up(config: RunConfig, run_dir: Path, resume: bool, data: DataSplits | None, log, world: World,
            held: contextlib.ExitStack) -> Session:
    lock = RunLock(run_dir) if world.main else None
    # what other processes leave idle, measured over 0.1 s while this one sleeps (its own threads would take CPU
    # from theirs and hide them); a run that will compile starts the compiler's import now, to overlap the data load
    idle = None if config.train.threads is not None else idle_cpus(0.1)
    if config.train.compile == "on" and not ahead_of_time_possible(config, world):
        warm_up_compiler()
    if resume:
        saved = load_config(run_dir)
        if not has_checkpoint(run_dir):
            raise CheckpointError(f"{run_dir} has a config but no checkpoint yet; start it again without --resume")
        if lock is not None:
            held.enter_context(lock)   # released by fit() on every way out
        try:
            check_unchanged(saved.data)
        except DataError as e:
            raise CheckpointError(f"cannot resume {run_dir}: {str(e).split('; pass')[0]}; resuming would mix two "
                                  "data sets: start a new run") from None
        data = data or load_data(saved.data)
        config = _resumed_config(run_dir, saved, resolve(config, data))
    else:
        if world.main:
            _check_new(run_dir)
        check_names(config)     # before loading the data: a misspelt option fails at once
        data = data or load_data(config.data)
        config = resolve(config, data)
        check_applicable(config)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, fingerprint=fingerprint(config.data)),
                                     plugins=plugin_modules(config))
        if "__main__" in config.plugins:
            log("note: a component of this run is defined in the script itself (__main__): later commands on the run "
                "cannot find it; define it in a module, and pass --import MODULE to them (vaekit.plugins)")
    tcfg = config.train
    device = resolve_device(tcfg.device)
    precision = resolve_precision(tcfg.precision, device)   # before seeding: it must not touch the RNG streams
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", torch.cuda.current_device())   # the one start() gave this process
    threads = resolve_threads(tcfg.threads, device, idle, share=world.local_size)
    torch.set_num_threads(threads)
    torch.manual_seed(tcfg.seed)
    model = build_model(config.model).to(device)
    check_support(model, data)
    optimizer = make_adam(model.parameters(), tcfg.lr, tcfg.adam_eps)   # one fused kernel for all parameters
    s = Session(config, run_dir, model, optimizer, torch.Generator(device=device).manual_seed(tcfg.seed),
                data.train.to(device), data.val.to(device) if data.val is not None else None, precision, lock=lock,
                guard=Guard(model, optimizer, log=log), world=world)
    _restore(s) if resume else _create(s, held) if world.main else None
    s.guard.snapshot()   # the state training starts from is the first good one
    s.history = read_metrics(run_dir, upto=s.progress.start, log=log)
    if world.main:
        write_metrics(run_dir, s.history)   # drops lines of epochs past the checkpoint
    s.data_name = data.name
    return s


def _resumed_config(run_dir: Path, saved: RunConfig, requested: RunConfig) -> RunConfig:
    """The saved config; the caller may only change what RESUMABLE names."""
    changed = differences(saved, requested, ignore=(*RESUMABLE, "fingerprint"))
    if changed:
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
        raise CheckpointError(f"the options differ from those {run_dir} was trained with ({'; '.join(changed)}); "
                              f"resume with the same options (only {allowed} may change) or start a new --run-dir")
    return dataclasses.replace(saved, train=dataclasses.replace(saved.train, **{k: getattr(requested.train, k) for k in RESUMABLE}))


def _restore(s: Session) -> None:
    load_weights(s.run_dir, s.model)
    s.progress = Progress.restored(load_trainer_state(s.run_dir, s.optimizer), s.generator, s.world.main)
    g, p = s.guard, s.progress   # the guard goes on with its counts and its roll-back budget as they were
    g.lr_scale, g.skipped, g.rollbacks, g.bad_in_a_row = p.lr_scale, p.skipped, p.rollbacks, p.bad_in_a_row
    if s.config.train.precision == "auto" and s.progress.precision in ("fp32", "bf16"):
        s.precision = s.progress.precision   # what 'auto' chose when the run started: a resume never switches


def _check_new(run_dir: Path) -> None:
    if has_checkpoint(run_dir):
        raise CheckpointError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    check_new_run_dir(run_dir)


def _create(s: Session, held: contextlib.ExitStack) -> None:
    """The run directory, locked and marked, with its config: checked again under the lock, so of two trainers
    started on one folder exactly one trains."""
    try:
        s.run_dir.mkdir(parents=True)
        s.created.append(s.run_dir)
    except FileExistsError:
        pass    # an empty folder the user made, or one another trainer has just made: the lock decides
    new_lock = not (s.run_dir / LOCK).exists()
    held.enter_context(s.lock)   # released by fit() on every way out
    if new_lock:
        s.created.append(s.run_dir / LOCK)
    try:
        _check_new(s.run_dir)
        for name in (MARKER, "config.json", METRICS, BEST):
            if not (s.run_dir / name).exists():
                s.created.append(s.run_dir / name)
        mark(s.run_dir)
        s.config.save(s.run_dir / "config.json")
    except BaseException:
        _remove_unfinished(s)
        raise


def _remove_unfinished(s: Session) -> None:
    """A new run that failed before its first checkpoint leaves nothing behind (not even an empty folder)."""
    if s.state is not None or has_checkpoint(s.run_dir):
        return
    for path in reversed(s.created):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)   # a folder this call created: nothing else is in it
        else:
            path.unlink(missing_ok=True)


def banner(s: Session) -> str:
    """What is trained, how, on what: the line before the first epoch."""
    tcfg, model = s.config.train, s.model
    read = reads_of(get_loss(tcfg.loss))
    how = [f"{tcfg.loss} loss"]
    if "beta" in read and tcfg.beta != 1:
        how.append(f"beta {tcfg.beta:g}")
    if "kl_warmup_epochs" in read and tcfg.kl_warmup_epochs:
        how.append(f"KL warm-up {tcfg.kl_warmup_epochs:g} epochs")
    if "mc_samples" in read:
        how.append(f"{tcfg.mc_samples} sample{'s' if tcfg.mc_samples > 1 else ''} of z per example")
    if "kl" in read:
        q_closed = getattr(getattr(model, "q_head", None), "closed_form_kl", True)   # a flow's q has none
        closed = tcfg.kl != "mc" and getattr(model.prior(), "closed_form_kl", False) and q_closed
        how.append(f"{'closed-form' if closed else 'Monte Carlo'} KL")
    how.append(f"{tcfg.schedule} schedule")
    return (f"training {s.config.model.model} ({', '.join(how)}; {model.describe_latent()}) on {s.data_name}: "
            f"{len(s.train)} examples, epochs {s.progress.start + 1}-{tcfg.epochs}, device {model.device}, {s.precision}, "
            f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"
            + (", compiled step" if s.step is not None and s.step.compiled else "")
            + (f", {s.world.size} processes" if s.world.distributed else ""))


def optimiser_step(optimizer, finite: torch.Tensor) -> None:
    """The optimiser's step if `finite` (a 0-d tensor, 1.0 or 0.0) says so: decided on the device by FusedAdam, read
    here for torch.optim's Adam (the fallback where torch lacks the fused kernel)."""
    if isinstance(optimizer, FusedAdam):
        optimizer.step(found_inf=1.0 - finite)
    elif float(finite) == 1.0:
        optimizer.step()


def train_epoch(s: Session, epoch: int, progress: bool) -> dict:
    """One pass over the shuffled training set (from the saved position, after a mid-epoch resume); the
    epoch's mean loss terms. Saves mid-epoch state every checkpoint_every minutes and on SIGINT/SIGTERM."""
    tcfg, model, n = s.config.train, s.model, len(s.train)
    model.train()
    ctx = LossContext(tcfg, epoch, n)
    batch_size = batch_size_at(tcfg, epoch)
    steps_per_epoch, steps_before = math.ceil(n / batch_size), steps_in(tcfg, n, 0, epoch)
    position, s.progress.position = s.progress.position, None
    if position is None:   # a fresh epoch: its permutation is the generator's next draw
        epoch_rng, start, sums = s.generator.get_state(), 0, {**dict.fromkeys(TERMS, 0.0), "seen": 0.0}
        order = torch.randperm(n, generator=s.generator, device=s.train.device)
    else:                  # resumed mid-epoch: the same permutation, then the generator where it stood
        epoch_rng, start, sums = position["epoch_rng"], position["step"], position["sums"]
        data_rng = s.generator.get_state()
        s.generator.set_state(epoch_rng)
        order = torch.randperm(n, generator=s.generator, device=s.train.device)
        s.generator.set_state(data_rng)
    t0 = last_save = time.perf_counter()
    built_before = s.step.build_seconds
    s.threads.reset()
    params = list(model.parameters())
    bar = tqdm(total=n, initial=min(n, start * batch_size), unit="img", unit_scale=True, leave=False,
               desc=f"epoch {epoch + 1}/{tcfg.epochs}") if progress else None
    # each step's TERMS' sums and finite flag stay on the device until the host reads them, READ_EVERY steps at a
    # time, into the guard (its counts and roll-backs) and the epoch's sums (in the steps' order: the same float64
    # additions as reading every step, so a resumed run adds up exactly as an unbroken one); every step where the
    # processes must agree on the step and on saving, or where the optimiser cannot skip a step on the device
    pending: list[tuple[torch.Tensor, int]] = []   # (TERMS' sums and the finite flag, examples) since the last read
    read_every = 1 if s.world.distributed or not isinstance(s.optimizer, FusedAdam) else READ_EVERY

    def read(rows_now: int) -> None:   # rows_now: this process's rows in the last step, for the progress bar
        rows = torch.stack([values for values, _ in pending]).tolist()   # the host's one wait for the device
        s.guard.record_all([row[3] for row in rows])
        for row, (_, examples) in zip(rows, pending, strict=True):
            if row[3] == 1.0:
                for k, v in zip(TERMS, row, strict=False):
                    sums[k] += v
                sums["seen"] += examples
        if bar is not None:
            bar.set_postfix(loss=f"{rows[-1][0] / rows_now:.2f}", refresh=False)
        pending.clear()

    for i, (xb, yb, shard) in enumerate(shard_batches(s.train, batch_size, s.world, s.generator, order=order,
                                                      start=start), start):
        lr = learning_rate(tcfg, epoch + i / steps_per_epoch) * s.guard.lr_scale
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        ctx_now = dataclasses.replace(ctx, epoch=epoch + i * batch_size / n)
        values = s.step.update(xb, yb, ctx_now, shard)   # TERMS' sums, then finite; the optimiser's step if finite
        split = values is None
        if split:   # the split step: forward and backward, then the optimiser
            s.optimizer.zero_grad(set_to_none=True)
            sums_now = s.step(xb, yb, ctx_now, shard)
            if tcfg.schedule == "alternating":
                hold_fixed(model, tcfg, steps_before + i)
            values = torch.cat([sums_now, step_is_finite(sums_now, params)[None]])
        due = bool(s.stop_signal) or time.perf_counter() - last_save >= 60 * tcfg.checkpoint_every
        if s.world.distributed:   # every process takes the same decisions: the step (the one graph agrees), saving now
            flags = s.world.sum(torch.stack([values[3] - 1, torch.tensor(float(due), device=values.device)]))
            values[3], due = float(flags[0] == 0), bool(flags[1] > 0)
        if split:
            optimiser_step(s.optimizer, values[3])
        pending.append((values, shard[2]))
        s.threads.look(s.step.build_seconds)   # another process may have taken a core (a clock read; /proc/stat at times)
        if bar is not None:
            bar.update(len(xb))
        if due or len(pending) >= read_every:
            read(len(xb))
        if due:
            save_position(s, epoch, i + 1, sums, epoch_rng)
            last_save = time.perf_counter()
            if s.stop_signal:
                raise Interrupted(s.stop_signal, f"in epoch {epoch + 1}, after {i + 1} of its {steps_per_epoch} steps",
                                  s.run_dir)
    if pending:
        read(len(xb))
    if bar is not None:
        bar.close()
    if sums["seen"] == 0 and n:
        raise DivergedError(f"training diverged: no step of epoch {epoch + 1} had a finite loss and gradients; the run "
                            "keeps its last finite checkpoint: retrain with a lower --lr (or resume it to try again)")
    sums = _summed_over_processes(s, sums)
    seen = max(sums.pop("seen"), 1.0)
    means = {f"train_{k}": v / seen for k, v in sums.items()}
    last_lr = learning_rate(tcfg, epoch + (steps_per_epoch - 1) / steps_per_epoch) * s.guard.lr_scale
    record = {"epoch": epoch + 1, "batch_size": batch_size, "lr": last_lr, **means,
              "train_neg_elbo": means["train_recon"] + means["train_kl"]}
    if s.guard.skipped or s.guard.rollbacks:
        record.update(skipped_steps=s.guard.skipped, rollbacks=s.guard.rollbacks)
    built = s.step.build_seconds - built_before   # compiling the step: not training, left out of the throughput
    if built:
        record["build_seconds"] = built
    used = s.threads.used()
    if len(used) > 1:
        record["threads_used"] = used   # the counts it changed through, in order (threads: the last)
    return {**record, "train_seconds": time.perf_counter() - t0 - built, "t0": t0}


def save_position(s: Session, epoch: int, step: int, sums: dict, epoch_rng: torch.Tensor) -> None:
    """A mid-epoch checkpoint: the weights and optimiser now, and where in the epoch they stand (the step,
    the sums so far, the generator state at the epoch's start and now), so resuming is bit-exact. It is for a crash
    alone: the guard's roll-back target stays the state the last epoch ended in (its losses checked finite on the
    training and validation sets), so a run trains the same with mid-epoch checkpoints as without them."""
    if not weights_finite(s.model) or s.guard.bad_in_a_row:
        # never a non-finite checkpoint, nor the state a streak of non-finite steps started from: that is the state
        # the guard may be about to roll back from, and as its roll-back target it would be rolled back to again
        return
    # the run's sums so far (each process resumes with its own part: process 0 all of it)
    state = _state(s, epoch, {"step": step, "sums": _summed_over_processes(s, sums), "epoch_rng": epoch_rng})
    if s.world.main:
        save_checkpoint(s.run_dir, s.model, s.optimizer, state)
    s.state = state   # (the guard's roll-back target stays the last epoch's end: a state checked whole)


def _summed_over_processes(s: Session, sums: dict) -> dict:
    """The sums of TERMS that each process kept for its rows, added up over the processes (a new dict; 'seen'
    counts global batches already, so it is kept as it is)."""
    if not s.world.distributed:
        return dict(sums)
    total = s.world.sum(torch.tensor([sums[k] for k in TERMS], dtype=torch.float64, device=s.model.device)).tolist()
    return {**sums, **dict(zip(TERMS, total, strict=True))}


def _state(s: Session, finished_epochs: int, position: dict | None = None, pending: bool | None = None) -> dict:
    """The trainer state to save now (Progress.state), with the guard's, the precision's and the step's part of it.
    pending: whether the model's work after training is still to do (default: whether it has any)."""
    p = s.progress
    p.after_training_pending = s.model.needs_after_training(s.config.train) if pending is None else pending
    p.lr_scale, p.precision, p.ahead_of_time = s.guard.lr_scale, s.precision, s.step.ahead_of_time
    p.skipped, p.rollbacks, p.bad_in_a_row = s.guard.skipped, s.guard.rollbacks, s.guard.bad_in_a_row
    return p.state(finished_epochs, s.generator, position)


def end_epoch(s: Session, record: dict, hooks, log) -> None:
    """Validation at the epoch's own schedule weight, metrics.jsonl, best/ weights, the checkpoint, the log line."""
    tcfg, t0, train_seconds = s.config.train, record.pop("t0"), record.pop("train_seconds")
    if s.val is not None:
        terms = evaluate(s.model, s.val, tcfg, epoch=record["epoch"], precision=s.precision, dataset_size=len(s.train),
                         world=s.world)
        record.update({f"val_{k}": v for k, v in terms.items()})
        record.update({f"val_{k}": v for k, v in s.model.validation_extras(s.val).items()})
    if record.get("build_seconds", 0) >= 0.5:
        log(f"compiled the step in {record['build_seconds']:.1f} s (once; epoch {record['epoch']}'s img/s leaves it out)")
    record.update(seconds=time.perf_counter() - t0, images_per_s=len(s.train) / max(train_seconds, 1e-9), precision=s.precision,
                  threads=torch.get_num_threads(), compiled=s.step.compiled or s.step.ahead_of_time,
                  ahead_of_time=s.step.ahead_of_time)
    if s.world.distributed:
        record["processes"] = s.world.size
    numbers = [v for v in record.values() if isinstance(v, float)]
    if not weights_finite(s.model) or not all(math.isfinite(v) for v in numbers):
        # nothing non-finite is ever saved: back to the last good state, and this epoch is not recorded
        s.guard.roll_back(f"epoch {record['epoch']} ended with non-finite weights or losses")
        raise DivergedError(f"training diverged in epoch {record['epoch']} (non-finite weights or losses); the run keeps "
                            "its last finite checkpoint: retrain with a lower --lr (or resume it to try again)")
    s.history.append(record)
    if s.world.main:
        append_metric(s.run_dir, record)  # before the checkpoint: a resume drops lines past it
    if s.val is not None and record["val_loss"] < s.progress.best_loss:
        s.progress.best_loss, s.progress.best_epoch = record["val_loss"], record["epoch"]
        if s.world.main:
            save_best(s.run_dir, s.model, record["epoch"], pending=s.model.needs_after_training(tcfg))
    s.state = _state(s, record["epoch"])
    if s.world.main:
        save_checkpoint(s.run_dir, s.model, s.optimizer, s.state)
    s.guard.snapshot()
    log(summary(record, tcfg.epochs))
    for hook in hooks:   # a hook may stop training: it returns why (a string), and the run ends cleanly here
        reason = hook(record, s.model)
        if isinstance(reason, str) and reason:
            s.hook_stop = reason


def stop_reason(s: Session, epoch: int, started: float) -> str | None:
    """Why training stops after 0-based `epoch` before its last one (None: it goes on)."""
    tcfg, done = s.config.train, epoch + 1
    if done >= tcfg.epochs:
        return None
    if s.hook_stop:
        return f"stopping after epoch {done} of {tcfg.epochs}: {s.hook_stop}"
    if tcfg.max_minutes is not None and time.perf_counter() - started >= 60 * tcfg.max_minutes:
        return (f"stopping after epoch {done} of {tcfg.epochs}: this invocation's {tcfg.max_minutes:g}-minute budget "
                f"is spent; continue with `vaekit train --resume {s.run_dir}`")
    if tcfg.early_stop is not None and s.progress.best_epoch and done - s.progress.best_epoch >= tcfg.early_stop:
        return (f"stopping early after epoch {done} of {tcfg.epochs}: no better validation loss for {tcfg.early_stop} "
                f"epochs (best {s.progress.best_loss:.2f} at epoch {s.progress.best_epoch}, saved in {s.run_dir / BEST})")
    return None


def finish(s: Session, log) -> None:
    """The model's after-training work (the VQ-VAE's code prior), for the last weights and the best ones: after this
    call's training, or on a resume of a run stopped before that work was saved. The checkpoints say it is pending
    until the last one of them is written, so a run stopped in between is finished by its next resume and refused by
    eval, sample and the rest meanwhile."""
    if not s.world.main or (s.state is None and not s.progress.after_training_pending):   # process 0 writes
        return
    tcfg, finished = s.config.train, s.state["epoch"] if s.state is not None else s.progress.start
    if s.state is None:
        log(f"{s.run_dir} stopped before its model's work after training was saved: doing it now")
    # the trainer state as the epochs left it (its RNG streams before the work below), so that a later resume with
    # more epochs goes on from where training stood
    state = s.state if s.state is not None else _state(s, finished)
    if not s.model.after_training(s.train, tcfg, log) and not s.progress.after_training_pending:
        return
    if s.progress.best_epoch == finished:
        save_best(s.run_dir, s.model, s.progress.best_epoch)
    elif s.progress.best_epoch:
        best = build_model(s.config.model).to(s.model.device)
        load_weights(s.run_dir, best, "best")
        log(f"the same for the best weights (epoch {s.progress.best_epoch}):")
        best.after_training(s.train, tcfg, log)
        save_best(s.run_dir, best, s.progress.best_epoch)
    s.state = {**state, "after_training_pending": False}   # last: until it is written, a resume does all the above again
    save_checkpoint(s.run_dir, s.model, s.optimizer, s.state)
