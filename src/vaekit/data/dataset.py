"""Datasets as tensors: pixel modes, splits, batches.

Data live as one float tensor on the device: images (N, C, H, W) in [0, 1], tables (N, D)
standardised; a batch is an index slice of a permutation. Where the arrays come from (downloads,
bundled sets, the user's files) is vaekit.data.sources.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config.schema import DataConfig, field_ref, unknown
from ..distributed import ALONE, World
from ..errors import ConfigError, DataError
from .sources import SOURCES, Arrays
from .sources.prepared import RowFile

SPLIT_SEED = 20131220     # fixed: every run of a source sees the same validation split
BINARISE_SEED = 1312      # fixed: static binarisation and the evaluation draw of dynamic mode


@dataclass
class Dataset:
    """Examples x (and labels y). x is either the examples themselves, float32, or 8-bit storage (a uint8 tensor,
    or the rows file of `vaekit prepare`) of which this split holds the rows `rows`, turned into floats
    x / scale a batch at a time (take)."""

    x: torch.Tensor                  # (N, C, H, W) float32 in [0, 1], or (N, D) standardised table rows; or storage
    y: torch.Tensor | None = None    # (len,) int64 class labels, one per example of this split
    binarise: bool = False           # draw x ~ Bernoulli(x) afresh for every batch (dynamic mode)
    scale: float | None = None       # storage: uint8 values, x = stored / scale
    rows: torch.Tensor | None = None  # storage: this split's rows of it (None: all)

    def __len__(self) -> int:
        return len(self.x) if self.rows is None else len(self.rows)

    @property
    def stored(self) -> bool:
        """x is 8-bit storage read a batch at a time (else: float examples in memory)."""
        return self.scale is not None

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape."""
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The examples at positions idx (1-D int64), as floats."""
        if self.rows is not None:
            idx = self.rows.index_select(0, idx.to(self.rows.device))
        xb = self.x.index_select(0, idx.to(self.x.device))
        return xb.float().div_(self.scale) if self.stored else xb

    def examples(self) -> torch.Tensor:
        """Every example, as floats (for stored data: read and converted whole)."""
        return self.head(len(self))

    def head(self, n: int) -> torch.Tensor:
        """The first n examples (fewer if there are fewer), as floats."""
        if not self.stored and self.rows is None:
            return self.x[:n]
        return self.take(torch.arange(min(n, len(self))))

    def subset(self, idx: torch.Tensor) -> Dataset:
        """The examples at positions idx (1-D int64) as a Dataset of their own (8-bit storage stays shared)."""
        y = None if self.y is None else self.y.index_select(0, idx.to(self.y.device))
        if self.stored:
            rows = idx if self.rows is None else self.rows.index_select(0, idx.to(self.rows.device))
            return Dataset(self.x, y, self.binarise, self.scale, rows)
        return Dataset(self.x.index_select(0, idx.to(self.x.device)), y, self.binarise)

    def to(self, device) -> Dataset:
        y = None if self.y is None else self.y.to(device)
        if self.stored and torch.device(device).type == "cpu":
            return Dataset(self.x, y, self.binarise, self.scale, self.rows)   # the storage is shared, not copied
        return Dataset(self.x.to(device), y, self.binarise, self.scale, None if self.rows is None else self.rows.to(device))


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset | None
    test: Dataset
    name: str
    columns: tuple[str, ...] | None = None  # tables: feature names
    mean: torch.Tensor | None = None        # tables: (D,) training-split mean and std that standardised x
    std: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None  # the name of each label number (None: the numbers)
    label_name: str = "class"               # what a label is: "digit", a CSV's label column, ...

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.shape

    @property
    def num_classes(self) -> int:
        """Label classes 0..K-1 seen in any split (K = largest label + 1); 0 for unlabelled data."""
        ys = [ds.y for ds in (self.train, self.val, self.test) if ds is not None and ds.y is not None and len(ds.y)]
        return max(int(y.max()) for y in ys) + 1 if ys else 0

    def class_name(self, label: int) -> str:
        return self.class_names[label] if self.class_names and 0 <= label < len(self.class_names) else str(label)

    def unstandardise(self, x: torch.Tensor) -> torch.Tensor:
        """Table rows back in the units of the file (x * std + mean); anything else as it is."""
        return x if self.mean is None else x * self.std.to(x.device) + self.mean.to(x.device)



def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $VAEKIT_DATA, else ~/.cache/vaekit."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("VAEKIT_DATA"):
        return Path(os.environ["VAEKIT_DATA"]).expanduser()
    return Path.home() / ".cache" / "vaekit"


# ----------------------------------------------------------------------------- splits

def _storage(a: Arrays) -> tuple | None:
    """8-bit images are kept as they are, 4x smaller than floats, and turned into floats a batch at a time (the same
    numbers): prepared files as files, uint8 arrays as uint8 tensors. None: the examples become floats now."""
    if isinstance(a.train_x, RowFile):
        return a.train_x, a.test_x
    arrays = [arr for arr in (a.train_x, a.test_x) if arr is not None]
    if a.scale != 255.0 or not all(np.asarray(arr).dtype == np.uint8 and np.asarray(arr).ndim == 4 for arr in arrays):
        return None
    with warnings.catch_warnings():   # read-only buffers: only read
        warnings.simplefilter("ignore", UserWarning)
        as_tensor = lambda arr: None if arr is None else torch.from_numpy(np.ascontiguousarray(arr))  # noqa: E731
        return as_tensor(a.train_x), as_tensor(a.test_x)


def load_data(cfg: DataConfig, download: bool = True, download_timeout: float = 30) -> DataSplits:
    """Load a source; scale images to [0, 1]; hold out a test set where the source has none;
    carve the validation split; standardise a table with the training split's mean and std;
    apply the pixel mode. Every split is a fixed-seed carve, the same for every run."""
    if cfg.source not in SOURCES:
        raise unknown(DataConfig, "source", cfg.source, SOURCES)
    source = SOURCES[cfg.source]
    for name in ("path", "image_size", "label_column"):
        if getattr(cfg, name) is not None and name not in getattr(source, "options", ()):
            users = ", ".join(k for k, s in SOURCES.items() if name in getattr(s, "options", ()))
            raise ConfigError(f"{name} ({field_ref(DataConfig, name)}) does not apply to data source {cfg.source!r}; "
                              f"it is for {users}")
    a = Arrays(*source.load(data_root(cfg.data_dir), download, download_timeout, cfg))

    def to_x(arr, name: str) -> torch.Tensor:
        arr = np.asarray(arr)
        if arr.dtype == np.uint8:   # torch's conversion: the same floats, 10x faster than numpy's (0.04 vs 0.43 s, MNIST)
            with warnings.catch_warnings():   # a read-only buffer: only read, into a new float tensor
                warnings.simplefilter("ignore", UserWarning)
                x8 = torch.from_numpy(arr)
            return x8.to(torch.float32).div_(a.scale or 1.0)
        with np.errstate(over="ignore"):   # values beyond float32 become inf here, and are refused just below
            x = torch.from_numpy(np.array(arr, dtype=np.float32)).div_(a.scale or 1.0)
        if np.asarray(arr).dtype.kind == "f" and not torch.isfinite(x).all():   # integers are always finite
            raise DataError(f"{cfg.path or cfg.source}: the {name} data hold values that are NaN, infinite or beyond "
                            "float32's range (|x| > 3.4e38); replace or rescale them")
        return x
    to_y = lambda arr: None if arr is None else torch.from_numpy(np.asarray(arr, dtype=np.int64))  # noqa: E731
    take = lambda y, idx: None if y is None else y.index_select(0, idx)  # noqa: E731
    # 8-bit storage stays as it is: the splits below then carve row numbers, not the examples themselves
    stored = _storage(a)
    rows_of = lambda storage: None if storage is None else torch.arange(len(storage))  # noqa: E731
    x, y = rows_of(stored[0]) if stored else to_x(a.train_x, "training"), to_y(a.train_y)
    if a.test_x is None:
        if len(x) < 2:
            raise DataError(f"{cfg.path or cfg.source} holds {len(x)} example(s); it needs at least 2 (train and test)")
        n_test = min(len(x) - 1, max(1, round(cfg.test_fraction * len(x))))
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
        test_x, test_y = take(x, order[:n_test]), take(y, order[:n_test])
        x, y = take(x, order[n_test:]), take(y, order[n_test:])
    else:
        test_x, test_y = rows_of(stored[1]) if stored else to_x(a.test_x, "test"), to_y(a.test_y)
    val_size = default_val_size(len(x)) if cfg.val_size is None else cfg.val_size
    if val_size >= len(x):
        raise ConfigError(f"val_size={val_size} ({field_ref(DataConfig, 'val_size')}) leaves no training data: "
                          f"{cfg.source} has {len(x)} training examples; choose fewer")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = order[:val_size], order[val_size:]
    mean = std = None
    if a.scale is None:  # a table: every split in units of the training split's standard deviation
        mean, std = x[train_idx].mean(0), x[train_idx].std(0, correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column becomes 0, not NaN
        x, test_x = (x - mean) / std, (test_x - mean) / std
    if cfg.limit is not None:
        train_idx = train_idx[: cfg.limit]
    if stored:   # a split is rows of the training file; the test split, rows of the test file if there is one
        test_storage = stored[0] if stored[1] is None else stored[1]
        split = lambda rows, labels, storage=stored[0]: Dataset(storage, labels, scale=a.scale, rows=rows)  # noqa: E731
        train, test = split(take(x, train_idx), take(y, train_idx)), split(test_x, test_y, test_storage)
        val = split(take(x, val_idx), take(y, val_idx)) if val_size else None
    else:
        train = Dataset(take(x, train_idx), take(y, train_idx))
        val = Dataset(take(x, val_idx), take(y, val_idx)) if val_size else None
        test = Dataset(test_x, test_y)
    if cfg.pixels != "grey":
        lo, hi = (0, 1) if stored else (min(x.min().item(), test_x.min().item()), max(x.max().item(), test_x.max().item()))
        if lo < 0 or hi > 1:
            raise ConfigError(f"pixels {cfg.pixels} ({field_ref(DataConfig, 'pixels')}) draws Bernoulli pixels from data "
                              f"in [0, 1], but {cfg.source} spans [{lo:.3g}, {hi:.3g}]; use pixels grey")
        g = torch.Generator().manual_seed(BINARISE_SEED)
        for ds in (train, val, test):
            if ds is not None and not (ds is train and cfg.pixels == "dynamic"):   # 8-bit storage: read in here
                ds.x, ds.scale, ds.rows = torch.bernoulli(ds.head(len(ds)), generator=g), None, None
        train.binarise = cfg.pixels == "dynamic"
    return DataSplits(train, val, test, cfg.source, a.columns, mean, std, a.class_names, a.label_name)


def fingerprint(cfg: DataConfig) -> str | None:
    """Count, size and SHA-256 of the files a source reads (None for data that ships with a package): a run
    keeps it, so a data file edited after training is noticed instead of silently changing the splits."""
    files = sorted(SOURCES[cfg.source].files(data_root(cfg.data_dir), cfg))
    if not files:
        return None
    digest, total = hashlib.sha256(), 0
    for path in files:
        data = path.read_bytes()
        total += len(data)
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(data).digest())
    return f"{len(files)} file(s), {total} bytes, sha256 {digest.hexdigest()[:20]}"


def check_unchanged(cfg: DataConfig, allow_changed: bool = False) -> None:
    """Refuse data whose files differ from those the run was trained on (unless allowed)."""
    if cfg.fingerprint is None or allow_changed:
        return
    now = fingerprint(cfg)
    if now != cfg.fingerprint:
        raise DataError(f"the data of this run ({cfg.path or cfg.source}) changed since it was trained (then {cfg.fingerprint}, "
                        f"now {now}): its test split or label numbers may differ; pass --allow-changed-data to use it anyway")


def load_run_data(cfg: DataConfig, data_dir: str | None = None, allow_changed: bool = False) -> DataSplits:
    """The data of a saved run, for eval / sample / plot: never downloaded (a data_dir in config.json does not
    make folders appear), and checked against the run's fingerprint."""
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    data = load_data(cfg, download=False)
    check_unchanged(cfg, allow_changed)
    return data


VAL_SHARE, VAL_MAX = 0.1, 5000   # the default validation split: 10% of the training set, at most 5,000 (MNIST: 5,000)


def default_val_size(n_train: int) -> int:
    """DataConfig.val_size None: 10% of the n_train training examples, at most 5,000; none below 10 examples."""
    return min(VAL_MAX, int(VAL_SHARE * n_train)) if n_train >= 10 else 0


def batches(ds: Dataset, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = False,
            order: torch.Tensor | None = None, start: int = 0):
    """Yield (x, y) batches: index slices of one permutation (`order`, or drawn here with shuffle), from batch
    number `start` on; re-binarised if ds.binarise."""
    for xb, yb, _ in shard_batches(ds, batch_size, ALONE, generator, shuffle, order, start):
        yield xb, yb


def shard_batches(ds: Dataset, batch_size: int, world: World, generator: torch.Generator | None = None,
                  shuffle: bool = False, order: torch.Tensor | None = None, start: int = 0):
    """batches() for one of world.size processes: (x, y, (lo, hi, n)), this process's rows lo:hi of each global
    batch of n. Every process draws the same permutation and binarisation (of the whole batch), so together
    they see exactly the batches one process sees."""
    n_all = len(ds)
    if order is None and shuffle:
        order = torch.randperm(n_all, generator=generator, device=ds.device)
    for i in range(start * batch_size, n_all, batch_size):
        n = min(batch_size, n_all - i)
        lo, hi = world.rows(n)
        keep = (0, n) if ds.binarise else (lo, hi)   # binarised: drawn for the whole batch, then cut
        if order is not None:   # index_select: 3-4x faster than x[rows] here
            rows = order[i + keep[0]:i + keep[1]]
            xb, yb = ds.take(rows), None if ds.y is None else ds.y.index_select(0, rows)
        elif ds.stored or ds.rows is not None:
            xb = ds.take(torch.arange(i + keep[0], i + keep[1]))
            yb = None if ds.y is None else ds.y[i + keep[0]:i + keep[1]]
        else:
            xb, yb = ds.x[i + keep[0]:i + keep[1]], None if ds.y is None else ds.y[i + keep[0]:i + keep[1]]
        if ds.binarise:
            xb = torch.bernoulli(xb, generator=generator)[lo:hi]
            yb = None if yb is None else yb[lo:hi]
        yield xb, yb, (lo, hi, n)
