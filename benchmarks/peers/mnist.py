"""MNIST from the official .gz files with numpy alone, for the peer scripts (they run outside vaekit's venv)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) as float32 in [0, 1], (60000, 784) and (10000, 784): grey MNIST, as pytorch/examples uses it."""
    folder = Path(root or os.environ.get("VAEKIT_DATA", "")) / "mnist"
    train = _idx(folder / "train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
    test = _idx(folder / "t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255
    return train, test
