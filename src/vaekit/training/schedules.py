"""Schedules of the training loop: the learning rate and the batch size by epoch, and which network an alternating
step updates."""

from __future__ import annotations

import math

from ..config.schema import TrainConfig


def hold_fixed(model, tcfg: TrainConfig, step: int) -> None:
    """Variational EM (notes 004): in each round of e_steps + m_steps optimiser steps, the first
    e_steps update only the encoder phi (E-step: q(z|x) towards p(z|x)), the rest only the
    decoder theta (M-step). Parameters with no gradient are skipped by Adam, moments and all."""
    e_step = step % (tcfg.e_steps + tcfg.m_steps) < tcfg.e_steps
    encoder = {id(p) for p in model.encoder_parameters()}
    for p in model.parameters():
        if (id(p) in encoder) != e_step:
            p.grad = None


def constant(tcfg: TrainConfig, progress: float) -> float:
    """The learning rate throughout."""
    return 1.0


def iwae_stages(tcfg: TrainConfig, progress: float) -> float:
    """Burda et al. 2016, sec. 5: stage i lasts 3^i epochs at lr * 10^(-i/7), i = 0..7 (3,280 epochs), then stays."""
    epoch, stage, end = int(progress), 0, 1
    while epoch >= end and stage < 7:
        stage += 1
        end += 3**stage
    return 10 ** (-stage / 7)


def cosine(tcfg: TrainConfig, progress: float) -> float:
    """Half a cosine from lr to 0 over the run's epochs (Loshchilov & Hutter 2017, without restarts)."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress / max(tcfg.epochs, 1e-9))))


# name -> factor(tcfg, progress in epochs) of TrainConfig.lr; --lr-warmup-epochs ramps any of them up from 0
LR_SCHEDULES = {"constant": constant, "iwae": iwae_stages, "cosine": cosine}


def learning_rate(tcfg: TrainConfig, progress: float) -> float:
    """The learning rate at `progress` epochs into training (fractional: it may change every step)."""
    warm = min(1.0, (progress + 1e-12) / tcfg.lr_warmup_epochs) if tcfg.lr_warmup_epochs > 0 else 1.0
    return tcfg.lr * warm * LR_SCHEDULES[tcfg.lr_schedule](tcfg, progress)


def batch_size_at(tcfg: TrainConfig, epoch: int) -> int:
    """The examples per step in epoch `epoch` (counting from 0): --batch-size, or the last --batch-size-from whose
    epoch has come."""
    size = tcfg.batch_size
    for start, grown in tcfg.batch_growth:
        if epoch >= start:
            size = grown
    return size


def batch_sizes(tcfg: TrainConfig, first: int, last: int) -> tuple[int, ...]:
    """The distinct batch sizes of epochs first..last-1, in order (the first epoch's alone where there are none)."""
    return tuple(dict.fromkeys(batch_size_at(tcfg, e) for e in range(first, last))) or (batch_size_at(tcfg, first),)


def steps_in(tcfg: TrainConfig, n: int, first: int, last: int) -> int:
    """Optimiser steps over n examples in epochs first..last-1."""
    return sum(math.ceil(n / batch_size_at(tcfg, e)) for e in range(first, last))
