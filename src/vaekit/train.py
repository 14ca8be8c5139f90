"""fit(): the one training loop. Adam, validation each epoch, metrics.jsonl, a checkpoint
every epoch, exact resume on CPU (weights, optimiser, epoch and both RNG streams)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checkpoint import has_checkpoint, load_config, load_trainer_state, load_weights, save_checkpoint
from .config import RunConfig
from .data import DataSplits, batches, load_data
from .errors import CheckpointError, ConfigError
from .evaluate import evaluate
from .models import build_model
from .objectives import get_loss
from .runtime import autocast, resolve_device, resolve_precision
from .vq import codebook_usage

METRICS = "metrics.jsonl"
RESUMABLE = ("epochs", "max_minutes", "device")  # what a resumed run may change
Hook = Callable[[dict, torch.nn.Module], None]  # called after each epoch with (record, model)


@dataclass
class FitResult:
    model: torch.nn.Module
    config: RunConfig
    history: list[dict]
    run_dir: Path


def fit(config: RunConfig, run_dir: str | Path, resume: bool = False, data: DataSplits | None = None,
        hooks: list[Hook] = (), progress: bool = True, log: Callable[[str], None] = print) -> FitResult:
    """Train `config` into `run_dir`; with resume, continue the run saved there."""
    run_dir = Path(run_dir)
    device = resolve_device(config.train.device)
    if resume:
        config = _resume_config(run_dir, config)
    elif has_checkpoint(run_dir):
        raise CheckpointError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    data = data or load_data(config.data)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, input_shape=data.input_shape,
                                                                   num_classes=data_classes(config, data)))
    tcfg = config.train
    loss_fn = get_loss(tcfg.loss)
    train, val = data.train.to(device), data.val.to(device) if data.val is not None else None

    torch.manual_seed(tcfg.seed)
    model = build_model(config.model).to(device)
    check_support(model, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr, eps=tcfg.adam_eps, fused=True)  # one kernel for all parameters
    steps_per_epoch = math.ceil(len(train) / tcfg.batch_size)
    generator = torch.Generator(device=device).manual_seed(tcfg.seed)  # shuffling + dynamic binarisation
    start, trained_seconds = 0, 0.0
    if resume:
        load_weights(run_dir, model)
        state = load_trainer_state(run_dir, optimizer)
        start, trained_seconds = state["epoch"], state.get("train_seconds", 0.0)
        torch.set_rng_state(state["tensors"]["torch_rng"])
        generator.set_state(state["tensors"]["data_rng"].to(generator.get_state().device))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.json")
    history = _read_metrics(run_dir, upto=start)
    state = None  # the trainer state of the last epoch this call finishes
    _write_metrics(run_dir, history)
    if start < tcfg.epochs:
        z = (f"{model.code_positions} codes of {config.model.code_dim}" if model.discrete
             else f"latent_dim={config.model.latent_dim}")
        log(f"training {config.model.model} ({tcfg.loss} loss, {z}) on {data.name}: "
            f"{len(train)} images, epochs {start + 1}-{tcfg.epochs}, device {device}, {resolve_precision(tcfg.precision, device)}")

    for epoch in range(start, tcfg.epochs):
        if tcfg.max_minutes is not None and trained_seconds >= 60 * tcfg.max_minutes:
            log(f"stopping after epoch {epoch}: the {tcfg.max_minutes:g}-minute training budget is spent")
            break
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(tcfg, epoch)
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        bar = tqdm(total=len(train), unit="img", unit_scale=True, leave=False, disable=not progress,
                   desc=f"epoch {epoch + 1}/{tcfg.epochs}")
        for i, (xb, yb) in enumerate(batches(train, tcfg.batch_size, generator, shuffle=True)):
            with autocast(device, tcfg.precision):
                terms = loss_fn(model.given(yb), xb, tcfg, epoch + i * tcfg.batch_size / len(train))  # progress in epochs
            loss = terms["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.schedule == "alternating":
                hold_fixed(model, tcfg, epoch * steps_per_epoch + i)
            optimizer.step()
            for k in sums:
                sums[k] += terms[k].detach().sum().item()
            bar.update(len(xb))
            bar.set_postfix(loss=f"{loss.item():.2f}", refresh=False)
        bar.close()
        train_seconds = time.perf_counter() - t0
        trained_seconds += train_seconds
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                  **{f"train_{k}": v / len(train) for k, v in sums.items()}}
        if val is not None:
            record.update({f"val_{k}": v for k, v in evaluate(model, val, tcfg).items()})
            if model.discrete:  # a VQ-VAE: how much of its codebook the validation set uses
                usage = codebook_usage(model.code_indices(val), config.model.codebook_size)
                record.update(val_perplexity=usage["perplexity"], val_dead_codes=usage["dead_codes"])
        record.update(seconds=time.perf_counter() - t0, images_per_s=len(train) / train_seconds)
        history.append(record)
        _append_metric(run_dir, record)  # before the checkpoint: a resume drops lines past it
        state = {"epoch": epoch + 1, "train_seconds": trained_seconds,
                 "tensors": {"torch_rng": torch.get_rng_state(), "data_rng": generator.get_state().cpu()}}
        save_checkpoint(run_dir, model, optimizer, state)
        log(_summary(record, tcfg.epochs))
        for hook in hooks:
            hook(record, model)
    if model.discrete and tcfg.prior_epochs and state is not None:
        # the VQ-VAE's autoregressive prior over code indices: fitted once the codes are final (this call trained)
        model.fit_prior(train, tcfg.prior_epochs, log=log)
        save_checkpoint(run_dir, model, optimizer, state)
    model.eval()
    return FitResult(model, config, history, run_dir)


def data_classes(config: RunConfig, data: DataSplits) -> int:
    """num_classes for the model config: the data's label classes for a conditional model, else 0."""
    from .models import MODELS

    cls = MODELS.get(config.model.model)
    if cls is None or not cls.conditional:
        return 0
    if data.train.y is None:
        raise ConfigError(f"model {config.model.model!r} is conditioned on labels, but {data.name} has none; use labelled "
                          "data (MNIST, an image folder with one sub-folder per class, a CSV with --label-column)")
    return data.num_classes


def check_support(model, data: DataSplits) -> None:
    """Refuse data outside the likelihood's support (Bernoulli: [0, 1]) before it trains into NaNs."""
    support = getattr(model.likelihood, "support", None)
    splits = [ds.x for ds in (data.train, data.val, data.test) if ds is not None and len(ds)]
    if support is None or not splits:
        return
    lo, hi = min(x.min().item() for x in splits), max(x.max().item() for x in splits)
    if lo < support[0] or hi > support[1]:
        what = " (a table, standardised)" if data.mean is not None else ""
        raise ConfigError(f"the {model.config.likelihood} likelihood models data in [{support[0]:g}, {support[1]:g}] but "
                          f"{data.name}{what} spans [{lo:.3g}, {hi:.3g}]; pass --likelihood gaussian-learned (or gaussian)")
    levels = getattr(model.likelihood, "levels", None)
    if levels is not None:
        steps = levels - 1
        off = max(((x * steps) - (x * steps).round()).abs().max().item() for x in splits)
        if off > 1e-3:
            raise ConfigError(f"the {model.config.likelihood} likelihood models {levels}-level (8-bit) images, k/{steps}, "
                              f"but {data.name} has values between the levels (resized images?); use --likelihood "
                              f"bernoulli or gaussian-learned")


def hold_fixed(model, tcfg, step: int) -> None:
    """Variational EM (notes 004): in each round of e_steps + m_steps optimiser steps, the first
    e_steps update only the encoder phi (E-step: q(z|x) towards p(z|x)), the rest only the
    decoder theta (M-step). Parameters with no gradient are skipped by Adam, moments and all."""
    e_step = step % (tcfg.e_steps + tcfg.m_steps) < tcfg.e_steps
    encoder = {id(p) for p in model.encoder_parameters()}
    for p in model.parameters():
        if (id(p) in encoder) != e_step:
            p.grad = None


def learning_rate(tcfg, epoch: int) -> float:
    """The learning rate of 0-based `epoch`. 'iwae': stage i lasts 3^i epochs at
    lr * 10^(-i/7), i = 0..7 (Burda et al. 2016, sec. 5; 3,280 epochs in all), then stays."""
    if tcfg.lr_schedule == "constant":
        return tcfg.lr
    stage, end = 0, 1
    while epoch >= end and stage < 7:
        stage += 1
        end += 3**stage
    return tcfg.lr * 10 ** (-stage / 7)


def _resume_config(run_dir: Path, requested: RunConfig | None) -> RunConfig:
    """The saved config; the caller may only change the budget (epochs, minutes) and the device."""
    saved = load_config(run_dir)
    if not has_checkpoint(run_dir):
        raise CheckpointError(f"{run_dir} has a config but no checkpoint yet; start it again without --resume")
    if requested is None:
        return saved
    keep = {k: getattr(requested.train, k) for k in RESUMABLE}
    same = dataclasses.replace(requested, model=dataclasses.replace(requested.model, input_shape=saved.model.input_shape,
                                                                    num_classes=saved.model.num_classes))
    if dataclasses.replace(same.train, **{k: getattr(saved.train, k) for k in keep}) != saved.train \
            or same.model != saved.model or same.data != saved.data:
        raise CheckpointError(f"the options differ from those {run_dir} was trained with; resume with the same "
                              "options (only --epochs, --max-minutes and --device may change) or start a new --run-dir")
    return dataclasses.replace(saved, train=dataclasses.replace(saved.train, **keep))


def _read_metrics(run_dir: Path, upto: int) -> list[dict]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto]


def _write_metrics(run_dir: Path, rows: list[dict]) -> None:
    from .checkpoint import atomic_write_text

    atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def _append_metric(run_dir: Path, row: dict) -> None:
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def _summary(r: dict, epochs: int) -> str:
    val = f"  val {r['val_loss']:.2f}" if "val_loss" in r else ""
    if "val_perplexity" in r:
        val += f" (codebook perplexity {r['val_perplexity']:.1f}, {r['val_dead_codes']} dead)"
    return (f"epoch {r['epoch']}/{epochs}  train {r['train_loss']:.2f} (recon {r['train_recon']:.2f}, "
            f"kl {r['train_kl']:.2f}){val}  {r['seconds']:.1f}s  {r['images_per_s']:.0f} img/s")
