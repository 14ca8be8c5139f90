"""What a data source's load() returns, and label numbering."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...errors import DataError


class Arrays(NamedTuple):
    """What a source's load() returns; load_data turns it into float tensors and splits."""

    train_x: np.ndarray                      # (N, C, H, W) images or (N, D) table rows
    train_y: np.ndarray | None = None        # (N,) integer class labels
    test_x: np.ndarray | None = None         # None: load_data holds out cfg.test_fraction of train_x
    test_y: np.ndarray | None = None
    scale: float | None = 1.0                # x / scale is the data; None: a table, standardised by load_data
    columns: tuple[str, ...] | None = None   # tables: the feature names, in column order
    class_names: tuple[str, ...] | None = None  # the name of each label number (None: the numbers themselves)
    label_name: str = "class"                # what a label is ("digit", a CSV's label column), for legends


def class_ids(labels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Class labels -> ((N,) int64, names): non-negative integers as they are (names None); names (or
    negative numbers) numbered in sorted order, with the sorted names."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iub" or (labels.dtype.kind == "f" and np.isfinite(labels).all()
                                      and (labels == np.round(labels)).all()):
        ints = labels.astype(np.int64)
        if len(ints) == 0 or ints.min() >= 0:
            return ints, None
    elif labels.dtype.kind not in "US":
        raise DataError(f"labels of dtype {labels.dtype} are not class labels; use integers or names")
    names, ids = np.unique(labels, return_inverse=True)
    return ids.reshape(-1).astype(np.int64), tuple(str(n) for n in names)
