"""TensorBoard logging as a training hook: `vaekit train --tensorboard`, or fit(..., hooks=[TensorBoard(run_dir)]).

Each epoch: every number of its metrics.jsonl line as a scalar (step = the epoch), a grid of samples, a grid of test
images over their reconstructions, and the histogram of the test images' posterior means; written to
RUN/tensorboard/ by torch.utils.tensorboard's SummaryWriter. A resumed run opens the writer with purge_step at
its first new epoch, so an epoch logged before a crash and trained again is shown once. Needs the `tensorboard`
extra: pip install 'vaekit[tensorboard]'.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..outputs.images import image_grid

SUBDIR = "tensorboard"
N_IMAGES = 32      # samples and reconstructions per epoch
N_CODES = 1000     # test images whose posterior means make the histogram


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    except ImportError:   # torch's module imports the tensorboard package
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'vaekit[tensorboard]'") from None
    return SummaryWriter


class TensorBoard:
    """A fit() hook: hook(record, model) after each finished (checkpointed) epoch."""

    def __init__(self, run_dir: str | Path, data_dir: str | None = None):
        self.run_dir, self.data_dir = Path(run_dir), data_dir
        self.writer_class = _summary_writer()   # fails before training starts, not after the first epoch
        self.writer = None
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def _open(self, epoch: int) -> None:
        from ..data.dataset import load_run_data  # noqa: PLC0415
        from ..store.checkpoint import load_config  # noqa: PLC0415

        self.writer = self.writer_class(str(self.run_dir / SUBDIR), purge_step=epoch)
        test = load_run_data(load_config(self.run_dir).data, self.data_dir).test
        n = min(len(test), N_CODES)
        self.images, self.labels = test.head(n), None if test.y is None else test.y[:n]

    def __call__(self, record: dict, model) -> None:
        epoch = record["epoch"]
        if self.writer is None:
            self._open(epoch)
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch":
                self.writer.add_scalar(name, value, epoch)
        was_training = model.training
        model.eval()
        device = model.device
        x = self.images.to(device)
        y = None if self.labels is None else self.labels.to(device)
        with torch.no_grad():
            self._image("samples", model.generate(N_IMAGES), epoch)   # a conditional model: the classes in turn
            shown = x[:N_IMAGES // 2]
            recon = model.given(None if y is None else y[:len(shown)]).reconstruct(shown)
            self._image("reconstructions (top: test images)", torch.cat([shown, recon]), epoch, nrow=len(shown))
            codes = model.given(y).encode(x).mode.float()
            self.writer.add_histogram("posterior means", model.shown(codes), epoch)
        model.train(was_training)
        self.writer.flush()

    def _image(self, tag: str, x: torch.Tensor, epoch: int, nrow: int | None = None) -> None:
        if x.dim() != 4:   # a table's rows are not images
            return
        grid = image_grid(x.float().cpu(), nrow=nrow)   # (H, W, C) uint8
        self.writer.add_image(tag, grid, epoch, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
