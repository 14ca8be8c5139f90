"""Schedules of the training loop: the learning rate by epoch, and which network an alternating step updates."""

from __future__ import annotations

from .config import TrainConfig


def hold_fixed(model, tcfg: TrainConfig, step: int) -> None:
    """Variational EM (notes 004): in each round of e_steps + m_steps optimiser steps, the first
    e_steps update only the encoder phi (E-step: q(z|x) towards p(z|x)), the rest only the
    decoder theta (M-step). Parameters with no gradient are skipped by Adam, moments and all."""
    e_step = step % (tcfg.e_steps + tcfg.m_steps) < tcfg.e_steps
    encoder = {id(p) for p in model.encoder_parameters()}
    for p in model.parameters():
        if (id(p) in encoder) != e_step:
            p.grad = None


def learning_rate(tcfg: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based `epoch`. 'iwae': stage i lasts 3^i epochs at
    lr * 10^(-i/7), i = 0..7 (Burda et al. 2016, sec. 5; 3,280 epochs in all), then stays."""
    if tcfg.lr_schedule == "constant":
        return tcfg.lr
    stage, end = 0, 1
    while epoch >= end and stage < 7:
        stage += 1
        end += 3**stage
    return tcfg.lr * 10 ** (-stage / 7)
