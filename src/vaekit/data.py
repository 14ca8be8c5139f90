"""Datasets as tensors: sources (download + checksum + cache), pixel modes, splits, batches.

Data live as one float tensor on the device: images (N, C, H, W) in [0, 1], tables (N, D)
standardised; a batch is an index slice of a permutation. Nothing here touches the network
unless a file is missing. The sources that read the user's own files live in vaekit.sources.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .errors import ConfigError, DataError
from .idx import read_idx
from .sources import Arrays, ArraySource, CSVSource, FolderSource

SPLIT_SEED = 20131220     # fixed: every run of a source sees the same validation split
BINARISE_SEED = 1312      # fixed: static binarisation and the evaluation draw of dynamic mode


@dataclass
class Dataset:
    x: torch.Tensor                  # (N, C, H, W) float32 in [0, 1], or (N, D) standardised table rows
    y: torch.Tensor | None = None    # (N,) int64 class labels
    binarise: bool = False           # draw x ~ Bernoulli(x) afresh for every batch (dynamic mode)

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device) -> "Dataset":
        y = None if self.y is None else self.y.to(device)
        return Dataset(self.x.to(device), y, self.binarise)


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset | None
    test: Dataset
    name: str
    columns: tuple[str, ...] | None = None  # tables: feature names
    mean: torch.Tensor | None = None        # tables: (D,) training-split mean and std that standardised x
    std: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        """Label classes 0..K-1 seen in any split (K = largest label + 1); 0 for unlabelled data."""
        ys = [ds.y for ds in (self.train, self.val, self.test) if ds is not None and ds.y is not None and len(ds.y)]
        return max(int(y.max()) for y in ys) + 1 if ys else 0

    def unstandardise(self, x: torch.Tensor) -> torch.Tensor:
        """Table rows back in the units of the file (x * std + mean); anything else as it is."""
        return x if self.mean is None else x * self.std.to(x.device) + self.mean.to(x.device)


# ----------------------------------------------------------------------------- sources

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

    options = ()             # DataConfig fields it reads besides data_dir
    tabular = False

    def load(self, root: Path, download: bool = True, timeout: float = 30, cfg: DataConfig | None = None) -> Arrays:
        folder = root / self.folder
        files = (self.train_images, self.train_labels, self.test_images, self.test_labels)
        missing = [f for f in files if _find(folder, f.name) is None]
        if missing:
            if not download:
                raise DataError(self._missing_message(folder, missing, "downloading is off"))
            for f in missing:
                self._download(folder, f, missing, timeout)
        arrays = [read_idx(_find(folder, f.name), f.shape) for f in files]
        for labels, f in ((arrays[1], self.train_labels), (arrays[3], self.test_labels)):
            if labels.max() >= self.n_classes:
                raise DataError(f"{folder / f.name} has label {labels.max()}, outside 0..{self.n_classes - 1}; replace it")
        train_x, train_y, test_x, test_y = arrays
        return Arrays(train_x[:, None], train_y, test_x[:, None], test_y, 255.0)

    def _missing_message(self, folder: Path, missing, why: str) -> str:
        names = ", ".join(f.name for f in missing)
        return (f"{self.folder} is not in {folder} and {why}: put {names} there "
                f"(from {self.mirrors[0]}), or point --data-dir / $VAEKIT_DATA at a folder holding {self.folder}/")

    def _download(self, folder: Path, f: IDXFile, missing: list, timeout: float) -> None:
        """Fetch f from the first mirror that answers; checksum, then an atomic rename."""
        errors = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(self._missing_message(folder, missing, f"the folder cannot be created ({e})")) from None
        for mirror in self.mirrors:
            try:
                with urllib.request.urlopen(mirror + f.name, timeout=timeout) as r:
                    payload = r.read()
            except OSError as e:
                errors.append(f"{mirror}: {getattr(e, 'reason', e)}")
                continue
            if hashlib.md5(payload).hexdigest() != f.md5:
                errors.append(f"{mirror}: checksum mismatch")
                continue
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{f.name}.")
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
            os.replace(tmp, folder / f.name)
            return
        raise DataError(self._missing_message(folder, missing, "the download failed (" + "; ".join(errors) + ")"))


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
)


class DigitsSource:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 16 grey levels): no download."""

    n_test = 297
    options = ()
    tabular = False

    def load(self, root: Path, download: bool = True, timeout: float = 30, cfg: DataConfig | None = None) -> Arrays:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.uint8)[:, None]                    # (N, 1, 8, 8), values 0..16
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        test, train = order[: self.n_test], order[self.n_test:]
        return Arrays(x[train], d.target[train], x[test], d.target[test], 16.0)


# name -> source: load(root, download, timeout, cfg) -> Arrays; `options` names the DataConfig fields
# it reads, `tabular` marks rows to standardise (the CLI then defaults to a Gaussian likelihood).
SOURCES = {
    "mnist": MNIST,
    "fashion-mnist": FASHION_MNIST,
    "digits": DigitsSource(),
    "folder": FolderSource(),
    "npy": ArraySource(),
    "csv": CSVSource(),
}


def default_likelihood(source: str) -> str:
    """The likelihood that suits a source when none is chosen: bernoulli for images in [0, 1],
    gaussian-learned for tables (standardised, so not in [0, 1])."""
    return "gaussian-learned" if getattr(SOURCES.get(source), "tabular", False) else "bernoulli"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $VAEKIT_DATA, else ~/.cache/vaekit."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("VAEKIT_DATA"):
        return Path(os.environ["VAEKIT_DATA"]).expanduser()
    return Path.home() / ".cache" / "vaekit"


# ----------------------------------------------------------------------------- splits

def load_data(cfg: DataConfig, download: bool = True, download_timeout: float = 30) -> DataSplits:
    """Load a source; scale images to [0, 1]; hold out a test set where the source has none;
    carve the validation split; standardise a table with the training split's mean and std;
    apply the pixel mode. Every split is a fixed-seed carve, the same for every run."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"data source {cfg.source!r} is unknown; choose one of {', '.join(SOURCES)}")
    source = SOURCES[cfg.source]
    for name in ("path", "image_size", "label_column"):
        if getattr(cfg, name) is not None and name not in getattr(source, "options", ()):
            users = ", ".join(k for k, s in SOURCES.items() if name in getattr(s, "options", ()))
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to data source {cfg.source!r}; it is for {users}")
    a = Arrays(*source.load(data_root(cfg.data_dir), download, download_timeout, cfg))
    to_x = lambda arr: torch.from_numpy(np.array(arr, dtype=np.float32)).div_(a.scale or 1.0)  # noqa: E731
    to_y = lambda arr: None if arr is None else torch.from_numpy(np.asarray(arr, dtype=np.int64))  # noqa: E731
    take = lambda y, idx: None if y is None else y[idx]  # noqa: E731
    x, y = to_x(a.train_x), to_y(a.train_y)
    if a.test_x is None:
        if len(x) < 2:
            raise DataError(f"{cfg.path or cfg.source} holds {len(x)} example(s); it needs at least 2 (train and test)")
        n_test = min(len(x) - 1, max(1, round(cfg.test_fraction * len(x))))
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
        test_x, test_y = x[order[:n_test]], take(y, order[:n_test])
        x, y = x[order[n_test:]], take(y, order[n_test:])
    else:
        test_x, test_y = to_x(a.test_x), to_y(a.test_y)
    if cfg.val_size >= len(x):
        raise ConfigError(f"val_size={cfg.val_size} leaves no training data ({cfg.source} has {len(x)} training examples); pass a smaller --val-size")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = order[: cfg.val_size], order[cfg.val_size:]
    mean = std = None
    if a.scale is None:  # a table: every split in units of the training split's standard deviation
        mean, std = x[train_idx].mean(0), x[train_idx].std(0, correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column becomes 0, not NaN
        x, test_x = (x - mean) / std, (test_x - mean) / std
    if cfg.limit is not None:
        train_idx = train_idx[: cfg.limit]
    train = Dataset(x[train_idx], take(y, train_idx))
    val = Dataset(x[val_idx], take(y, val_idx)) if cfg.val_size else None
    test = Dataset(test_x, test_y)
    if cfg.pixels != "grey":
        lo, hi = min(x.min().item(), test_x.min().item()), max(x.max().item(), test_x.max().item())
        if lo < 0 or hi > 1:
            raise ConfigError(f"--pixels {cfg.pixels} draws Bernoulli pixels from data in [0, 1], but {cfg.source} "
                              f"spans [{lo:.3g}, {hi:.3g}]; use --pixels grey")
        g = torch.Generator().manual_seed(BINARISE_SEED)
        for ds in (train, val, test):
            if ds is not None and not (ds is train and cfg.pixels == "dynamic"):
                ds.x = torch.bernoulli(ds.x, generator=g)
        train.binarise = cfg.pixels == "dynamic"
    return DataSplits(train, val, test, cfg.source, a.columns, mean, std)


def batches(ds: Dataset, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False):
    """Yield (x, y) batches: index slices of one permutation; re-binarised if ds.binarise."""
    n = len(ds)
    order = torch.randperm(n, generator=generator, device=ds.x.device) if shuffle else None
    for i in range(0, n, batch_size):
        sl = order[i:i + batch_size] if shuffle else slice(i, i + batch_size)
        xb = ds.x[sl]
        if ds.binarise:
            xb = torch.bernoulli(xb, generator=generator)
        yield xb, (None if ds.y is None else ds.y[sl])
