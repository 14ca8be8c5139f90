"""Generation: z ~ N(0, I) through the decoder, written as an image grid."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_model
from .errors import ConfigError
from .images import image_grid, save_png
from .runtime import resolve_device


def sample_run(run_dir: str | Path, n: int = 64, out: str | Path = "samples.png", temperature: float = 1.0,
               seed: int = 0, nrow: int | None = None, scale: int = 2, device: str = "auto") -> Path:
    """`vaekit sample RUN`: decode n draws of z ~ N(0, temperature^2 I) into a PNG grid."""
    if n < 1:
        raise ConfigError(f"-n {n} is impossible: ask for at least one sample")
    if temperature <= 0:
        raise ConfigError(f"--temperature {temperature} is impossible: it must be > 0")
    if Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {Path(out) / 'samples.png'}")
    model, _, _ = load_model(run_dir, resolve_device(device))
    torch.manual_seed(seed)
    return save_png(image_grid(model.generate(n, temperature), nrow), out, scale)
