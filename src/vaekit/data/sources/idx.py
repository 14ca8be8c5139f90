"""Datasets published as IDX files (MNIST, Fashion-MNIST): the format, read and validated, and the sources.

Files are validated by structure (magic number, dimensions, item count, byte count), not by
checksum, so a recompressed but intact copy loads and a truncated or corrupt one is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...config.schema import DataConfig
from ...errors import DataError
from ...files import atomic_write_bytes
from ...runtime import cache_dir
from .arrays import Arrays
from .download import fetch

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, expect_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an IDX file (.gz or raw) into an array; with expect_shape, insist on it. A .gz is decompressed once:
    later reads take the copy kept in cache_dir()/idx (MNIST's training images: 0.13 s to decompress)."""
    path = Path(path)
    copy = _decompressed_copy(path) if path.suffix == ".gz" else None
    if copy is not None:
        try:
            return _parse(copy.read_bytes(), path, expect_shape)
        except (OSError, DataError):
            pass   # a copy gone or damaged since: decompressed again below, and rewritten
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path} is corrupt or unreadable ({e}); {_FIX}") from None
    array = _parse(raw, path, expect_shape)
    if copy is not None:
        _keep_decompressed(copy, raw)
    return array


_FIX = "delete it (vaekit downloads it again) or replace it with an intact copy"


def _parse(raw: bytes, path: Path, expect_shape: tuple[int, ...] | None) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); {_FIX}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (incomplete header); {_FIX}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != need:
        raise DataError(f"{path} holds {len(raw) - header} data bytes but its header {shape} needs {need}; {_FIX}")
    if expect_shape is not None and tuple(shape) != tuple(expect_shape):
        raise DataError(f"{path} has shape {shape}, expected {tuple(expect_shape)}; {_FIX}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _decompressed_copy(path: Path) -> Path | None:
    """Where the decompressed bytes of this .gz are kept: named by its absolute path, size and modification
    time, so a changed or replaced file is decompressed again (None: it cannot be stat'ed)."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "idx" / f"{path.stem}.{key}.{st.st_size}-{st.st_mtime_ns}"


def _keep_decompressed(copy: Path, raw: bytes) -> None:
    try:
        copy.parent.mkdir(parents=True, exist_ok=True)
        for old in copy.parent.glob(f"{copy.name.rsplit('.', 1)[0]}.*"):   # older versions of the same file
            old.unlink(missing_ok=True)
        atomic_write_bytes(copy, raw)
    except OSError:
        pass   # a read-only or full cache: the next read decompresses again


@dataclass(frozen=True)
class IDXFile:
    name: str
    md5: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class IDXSource:
    """A dataset published as four IDX files (MNIST and its drop-in replacements)."""

    folder: str
    mirrors: tuple[str, ...]
    train_images: IDXFile
    train_labels: IDXFile
    test_images: IDXFile
    test_labels: IDXFile
    n_classes: int = 10
    description: str = ""    # one line for `vaekit list` (instances share the class docstring)
    class_names: tuple[str, ...] | None = None   # None: the label numbers
    label_name: str = "class"                    # what a label is, for legends

    options = ()             # DataConfig fields it reads besides data_dir
    tabular = False

    def load(self, root: Path, download: bool = True, timeout: float = 30, cfg: DataConfig | None = None) -> Arrays:
        folder = root / self.folder
        files = (self.train_images, self.train_labels, self.test_images, self.test_labels)
        missing = [f for f in files if _find(folder, f.name) is None]
        if missing:
            if not download:
                raise self._missing(folder, missing, "downloading is off")
            for f in missing:
                path, errors = fetch(self.mirrors, f.name, f.md5, folder, timeout)
                if path is None:
                    raise self._missing(folder, missing, "the download failed", errors)
        arrays = [read_idx(_find(folder, f.name), f.shape) for f in files]
        for labels, f in ((arrays[1], self.train_labels), (arrays[3], self.test_labels)):
            if labels.max() >= self.n_classes:
                raise DataError(f"{folder / f.name} has label {labels.max()}, outside 0..{self.n_classes - 1}; replace it")
        train_x, train_y, test_x, test_y = arrays
        return Arrays(train_x[:, None], train_y, test_x[:, None], test_y, 255.0, class_names=self.class_names,
                      label_name=self.label_name)

    def files(self, root: Path, cfg: DataConfig | None = None) -> list[Path]:
        """The files load() reads (for the run's data fingerprint)."""
        found = [_find(root / self.folder, f.name) for f in (self.train_images, self.train_labels, self.test_images,
                                                             self.test_labels)]
        return [f for f in found if f is not None]

    def _missing(self, folder: Path, missing, why: str, details: list[str] = ()) -> DataError:
        """A short line with the cause and the fix; the files and mirrors tried follow with --verbose."""
        names = ", ".join(f.name for f in missing)
        return DataError(f"{self.folder} is not in {folder} and {why}; put its files there or point --data-dir "
                         f"(or $VAEKIT_DATA) at a folder holding {self.folder}/",
                         details="\n".join([f"files needed: {names}", f"official mirror: {self.mirrors[0]}", *details]))


def _find(folder: Path, name: str) -> Path | None:
    """The file as published (.gz) or decompressed."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


MNIST = IDXSource(
    folder="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    train_images=IDXFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", (60000, 28, 28)),
    train_labels=IDXFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", (60000,)),
    test_images=IDXFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", (10000, 28, 28)),
    test_labels=IDXFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", (10000,)),
    description="MNIST handwritten digits (LeCun et al. 1998): 60,000 + 10,000 28x28 grey images, 10 classes",
    label_name="digit",
)

# The official files and MD5s of github.com/zalandoresearch/fashion-mnist (README, "Get the Data"),
# the same as torchvision's FashionMNIST.resources.
FASHION_MNIST = IDXSource(
    folder="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    train_images=IDXFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", (60000, 28, 28)),
    train_labels=IDXFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", (60000,)),
    test_images=IDXFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", (10000, 28, 28)),
    test_labels=IDXFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", (10000,)),
    description="Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 28x28 grey images of clothing, 10 classes",
    # the class names of the Fashion-MNIST README, in label order
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)
