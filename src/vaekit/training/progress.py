"""Where training stands: what a checkpoint saves besides the weights and Adam's state, and what a resume restores.

The run's inputs (its config, data, model and optimiser) are rebuilt from the run folder; its progress is this.
Progress.state() is the one save and Progress.restored() the one restore: they name the same fields, so a resumed
run goes on exactly where the saved one stood (bit for bit on a CPU, tests/test_train.py and tests/test_faults.py).
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass
class Progress:
    """The progress of one run: set by a resume, moved on by each epoch and mid-epoch checkpoint."""

    start: int = 0                    # epochs finished before this call of fit()
    best_loss: float = math.inf       # the lowest validation loss so far, and its epoch (0: none)
    best_epoch: int = 0
    lr_scale: float = 1.0             # the NaN guard's learning-rate factor after its roll-backs
    skipped: int = 0                  # the guard's count of skipped (non-finite) steps so far
    rollbacks: int = 0                # its roll-backs so far (the budget is guard.MAX_ROLLBACKS for the whole run)
    bad_in_a_row: int = 0             # non-finite steps since the last finite one
    precision: str | None = None      # what the run trains in (auto's choice when it started: a resume never switches)
    ahead_of_time: bool | None = None  # whether its steps so far came from the step built ahead of time (None: none yet)
    position: dict | None = None      # mid-epoch: where the epoch stands (step, sums, epoch_rng)
    after_training_pending: bool = False   # the model's work after training (a code prior) is not saved yet

    def state(self, finished_epochs: int, generator: torch.Generator, position: dict | None = None) -> dict:
        """The trainer state a checkpoint holds after `finished_epochs` (and, mid-epoch, `position`: the steps taken
        of the next epoch, its sums so far and the data generator's state at its start), with both RNG streams now."""
        tensors = {"torch_rng": torch.get_rng_state(), "data_rng": generator.get_state().cpu()}
        state = {"epoch": finished_epochs, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
                 "lr_scale": self.lr_scale, "skipped": self.skipped, "rollbacks": self.rollbacks,
                 "bad_in_a_row": self.bad_in_a_row, "after_training_pending": self.after_training_pending,
                 "precision": self.precision,
                 "ahead_of_time": bool(self.ahead_of_time), "tensors": tensors}
        if position is not None:
            state.update(step=position["step"], sums=position["sums"])
            tensors["epoch_rng"] = position["epoch_rng"].cpu()
        return state

    @classmethod
    def restored(cls, state: dict, generator: torch.Generator, main: bool = True) -> Progress:
        """The progress a checkpoint's trainer state describes, with both RNG streams set back as they were. main:
        process 0 resumes the mid-epoch sums whole, every other process from zero (its part is in process 0's)."""
        tensors = state["tensors"]
        torch.set_rng_state(tensors["torch_rng"])
        generator.set_state(tensors["data_rng"].to(generator.get_state().device))
        position = None
        if state.get("step"):   # saved mid-epoch: train_epoch starts there
            sums = state["sums"] if main else {**{k: 0.0 for k in state["sums"]}, "seen": state["sums"]["seen"]}
            position = {"step": state["step"], "sums": sums, "epoch_rng": tensors["epoch_rng"]}
        took_steps = bool(state["epoch"] or state.get("step"))   # the untrained epoch 0 of --epochs 0 has taken none
        return cls(start=state["epoch"], best_loss=state.get("best_loss", math.inf), best_epoch=state.get("best_epoch", 0),
                   lr_scale=state.get("lr_scale", 1.0), skipped=state.get("skipped", 0), rollbacks=state.get("rollbacks", 0),
                   bad_in_a_row=state.get("bad_in_a_row", 0), precision=state.get("precision"),
                   after_training_pending=bool(state.get("after_training_pending", False)),
                   ahead_of_time=bool(state.get("ahead_of_time")) if took_steps else None, position=position)
