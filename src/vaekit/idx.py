"""The IDX file format of MNIST (http://yann.lecun.com/exdb/mnist/), read and validated.

Files are validated by structure (magic number, dimensions, item count, byte count), not by
checksum, so a recompressed but intact copy loads and a truncated or corrupt one is refused.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, expect_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an IDX file (.gz or raw) into an array; with expect_shape, insist on it."""
    path = Path(path)
    fix = "delete it (vaekit downloads it again) or replace it with an intact copy"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path} is corrupt or unreadable ({e}); {fix}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (incomplete header); {fix}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != need:
        raise DataError(f"{path} holds {len(raw) - header} data bytes but its header {shape} needs {need}; {fix}")
    if expect_shape is not None and tuple(shape) != tuple(expect_shape):
        raise DataError(f"{path} has shape {shape}, expected {tuple(expect_shape)}; {fix}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
