"""Held-out evaluation: negative ELBO, reconstruction and KL in nats per example."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .checkpoint import load_model
from .data import Dataset, batches, load_data
from .errors import ConfigError
from .objectives import get_loss
from .runtime import autocast, resolve_device


@torch.no_grad()
def evaluate(model, ds: Dataset, train_cfg, batch_size: int = 1000) -> dict[str, float]:
    """Mean of the training loss terms over `ds` (z sampled, as in training), in nats/example."""
    loss_fn = get_loss(train_cfg.loss)
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for xb, _ in batches(ds, batch_size):
        with autocast(xb.device, train_cfg.precision):
            terms = loss_fn(model, xb, train_cfg)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v.double().sum().item()
    model.train(was_training)
    return {k: v / len(ds) for k, v in totals.items()}


def evaluate_run(run_dir: str | Path, split: str = "test", mc_samples: int | None = None,
                 device: str = "auto", data_dir: str | None = None, seed: int = 0) -> dict:
    """`vaekit eval RUN`: load a run, evaluate it on its test (or validation) split."""
    dev = resolve_device(device)
    model, config, epoch = load_model(run_dir, dev)
    data_cfg = config.data if data_dir is None else dataclasses.replace(config.data, data_dir=data_dir)
    splits = load_data(data_cfg)
    ds = {"test": splits.test, "val": splits.val}.get(split, "unknown")
    if ds == "unknown":
        raise ConfigError(f"split {split!r} is unknown; use test or val")
    if ds is None:
        raise ConfigError(f"the run {run_dir} was trained with --val-size 0: it has no validation split")
    train_cfg = config.train if mc_samples is None else dataclasses.replace(config.train, mc_samples=mc_samples)
    torch.manual_seed(seed)
    result = evaluate(model, ds.to(dev), train_cfg)
    return {"run": str(run_dir), "split": split, "epoch": epoch, "n": len(ds), "model": config.model.model,
            "loss_name": train_cfg.loss, "mc_samples": train_cfg.mc_samples, **result}
