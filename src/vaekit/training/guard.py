"""The NaN/Inf guard of the training loop: a run is never poisoned by a non-finite step.

A step whose loss or gradients are not finite is skipped (the optimiser does not move), decided on the device; the
host reads the steps' flags a batch at a time (train.READ_EVERY) and judges them in order. After
MAX_BAD_STEPS such steps in a row, the model and optimiser roll back to the last good state (the last
checkpoint, or the initial weights) and the learning rate is divided by LR_FACTOR; after MAX_ROLLBACKS
roll-backs training stops with a one-line error, and the run keeps its last finite checkpoint. A
checkpoint with non-finite weights is never written.
"""

from __future__ import annotations

import copy

import torch

from ..errors import VaekitError
from ..store.checkpoint import weights_finite  # noqa: F401  (the guard's test of a state, kept beside the saving that refuses one)
from ..torch_private import foreach_norm

MAX_BAD_STEPS = 10
MAX_ROLLBACKS = 3
LR_FACTOR = 10.0


class DivergedError(VaekitError):
    """Training kept producing non-finite numbers after every roll-back."""


def step_is_finite(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d tensor: 1.0 if the loss (any shape) and every gradient are finite, else 0.0 (no host synchronisation)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = loss.detach().float().sum()
    if grads:
        total = total + torch.stack(foreach_norm(grads)).float().sum()   # one fused pass over the gradients
    return torch.isfinite(total).float()


class Guard:
    """Counts bad steps and rolls the model and optimiser back to the last good snapshot."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_scale: float = 1.0, log=print):
        self.model, self.optimizer, self.lr_scale, self.log = model, optimizer, lr_scale, log
        self.bad_in_a_row, self.skipped, self.rollbacks = 0, 0, 0
        self.good = None   # snapshot() once the starting state is in place

    def snapshot(self) -> None:
        """The current state is good (it is about to be, or has just been, checkpointed)."""
        self.good = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()))

    def record(self, finite: bool) -> bool:
        """After a step: True if the step may be taken. Raises DivergedError when roll-backs run out."""
        if finite:
            self.bad_in_a_row = 0
            return True
        self.bad_in_a_row += 1
        self.skipped += 1
        if self.bad_in_a_row >= MAX_BAD_STEPS:
            self.roll_back(f"{MAX_BAD_STEPS} steps in a row had a non-finite loss or gradient")
        return False

    def record_all(self, flags: list[float]) -> None:
        """After steps the device already took or skipped (1.0: finite, taken; else skipped), in order: counts the
        skipped ones and rolls back where MAX_BAD_STEPS come in a row. The steps after a roll-back in the same list
        ran before it: they are counted, not judged again. Raises DivergedError when roll-backs run out."""
        rolled = False
        for flag in flags:
            if not rolled:
                rolls = self.rollbacks
                self.record(flag == 1.0)
                rolled = self.rollbacks > rolls
            elif flag != 1.0:
                self.skipped += 1

    def roll_back(self, why: str) -> None:
        self.rollbacks += 1
        if self.rollbacks > MAX_ROLLBACKS:
            raise DivergedError(f"training diverged: {why}, and {MAX_ROLLBACKS} roll-backs with a {LR_FACTOR:g}x lower "
                                "learning rate each did not help; the run keeps its last finite checkpoint: retrain "
                                "with a lower --lr (or resume it to try again)")
        weights, optimizer = self.good
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)
        self.lr_scale /= LR_FACTOR
        self.bad_in_a_row = 0
        self.log(f"{why}: rolled back to the last good state and divided the learning rate by {LR_FACTOR:g}")
