"""Prepared data (`vaekit prepare`): any image source written once as 8-bit rows in plain files, read a batch at
a time, so data larger than memory trains and N processes do not hold N copies.

A prepared folder holds train_x.u8 (and test_x.u8): N rows of C*H*W bytes, no header; train_y.npy / test_y.npy;
and meta.json (shapes, class names). Rows are read with os.pread into a fresh buffer, not memory-mapped: the pages
of a map that training has touched count in the process's resident memory until it unmaps them, while pread's
pages stay in the kernel's page cache, shared by every process and given back under pressure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ...config.schema import DataConfig
from ...errors import DataError
from ...files import atomic_write_text, parse_json, remove_orphans
from .arrays import Arrays

META = "meta.json"
FORMAT = "vaekit-prepared-1"


class RowFile:
    """(N, *shape) uint8 rows in a file, read by row: len, shape, device and index_select(0, rows) as a tensor."""

    def __init__(self, path: Path, n: int, shape: tuple[int, ...]):
        self.path, self.n, self.row_shape = Path(path), n, tuple(shape)
        self.row_bytes = int(np.prod(shape))
        size = self.path.stat().st_size
        if size != n * self.row_bytes:
            raise DataError(f"{self.path} holds {size} bytes, not the {n} x {self.row_bytes} its {META} says; prepare "
                            "the data again (vaekit prepare)")
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):   # a copy (another process) opens the file again
        return {**self.__dict__, "_fd": None}

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.row_shape)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def index_select(self, dim: int, rows: torch.Tensor) -> torch.Tensor:
        """The rows `rows` (any order, repeats allowed), (len(rows), *shape) uint8: contiguous runs of rows are
        read with one pread each."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        idx = rows.cpu().numpy().astype(np.int64, copy=False)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"row {int(idx.max())} of {self.n}")
        order = np.argsort(idx, kind="stable")
        wanted = idx[order]
        out = np.empty((len(idx), self.row_bytes), dtype=np.uint8)
        start = 0
        while start < len(wanted):   # a run of consecutive rows in the file
            stop = start + 1
            while stop < len(wanted) and wanted[stop] - wanted[stop - 1] in (0, 1):
                stop += 1
            first, last = wanted[start], wanted[stop - 1]
            data = os.pread(self._fd, int(last - first + 1) * self.row_bytes, int(first) * self.row_bytes)
            block = np.frombuffer(data, dtype=np.uint8).reshape(-1, self.row_bytes)
            out[order[start:stop]] = block[wanted[start:stop] - first]
            start = stop
        return torch.from_numpy(out.reshape(len(idx), *self.row_shape))

    def to(self, device) -> RowFile | torch.Tensor:
        """Another device: the rows themselves, copied there (the file is read whole)."""
        if torch.device(device).type == "cpu":
            return self
        return self.index_select(0, torch.arange(self.n)).to(device)


class PreparedSource:
    """A folder written by `vaekit prepare`: 8-bit images read a batch at a time (--path FOLDER)."""

    options = ("path",)
    tabular = False

    def files(self, root: Path, cfg: DataConfig | None = None) -> list[Path]:
        folder = _folder(cfg)
        return [p for p in (folder / META, folder / "train_y.npy", folder / "test_y.npy") if p.exists()]

    def load(self, root: Path, download: bool = True, timeout: float = 30, cfg: DataConfig | None = None) -> Arrays:
        folder = _folder(cfg)
        try:
            meta = parse_json((folder / META).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{folder} is not a prepared data folder ({e}); make one with vaekit prepare") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{folder / META} is not vaekit's ({FORMAT}); make the folder with vaekit prepare")
        shape = tuple(meta["shape"])
        train_x = RowFile(folder / "train_x.u8", meta["train"], shape)
        test_x = RowFile(folder / "test_x.u8", meta["test"], shape) if meta.get("test") else None
        labels = lambda name: np.load(folder / name) if (folder / name).exists() else None  # noqa: E731
        names = tuple(meta["class_names"]) if meta.get("class_names") else None
        return Arrays(train_x, labels("train_y.npy"), test_x, labels("test_y.npy") if test_x is not None else None,
                      255.0, class_names=names, label_name=meta.get("label_name", "class"))


def _folder(cfg: DataConfig | None) -> Path:
    if cfg is None or not cfg.path:
        raise DataError("data source 'prepared' needs --path: the folder vaekit prepare wrote")
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist or is not a folder; make it with vaekit prepare --out {folder}")
    return folder


def prepare(a: Arrays, out: Path, name: str) -> dict:
    """Write the images of `a` (8-bit: uint8 arrays scaled by 255) as a prepared folder at `out` (a new folder:
    written beside it, then renamed into place)."""
    if a.scale != 255.0 or np.asarray(a.train_x).dtype != np.uint8 or np.asarray(a.train_x).ndim != 4:
        raise DataError(f"{name} is not 8-bit images; vaekit prepare writes image sources (folder, npy of uint8, "
                        "mnist, ...), not tables or floats")
    out = Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; give vaekit prepare a new folder")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    remove_orphans(out)   # the temporary folders of a killed prepare of the same OUT
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta = {"format": FORMAT, "source": name, "shape": list(np.asarray(a.train_x).shape[1:]),
                "train": len(a.train_x), "test": 0 if a.test_x is None else len(a.test_x),
                "class_names": list(a.class_names) if a.class_names else None, "label_name": a.label_name}
        for split, x, y in (("train", a.train_x, a.train_y), ("test", a.test_x, a.test_y)):
            if x is None:
                continue
            digest = hashlib.sha256()
            with open(tmp / f"{split}_x.u8", "wb") as f:
                for i in range(0, len(x), 4096):   # in blocks: no second copy of the whole array
                    block = np.ascontiguousarray(x[i:i + 4096], dtype=np.uint8).tobytes()
                    digest.update(block)
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            meta[f"{split}_sha256"] = digest.hexdigest()   # in meta.json: the run's data fingerprint covers it
            if y is not None:
                np.save(tmp / f"{split}_y.npy", np.asarray(y, dtype=np.int64))
        atomic_write_text(tmp / META, json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
