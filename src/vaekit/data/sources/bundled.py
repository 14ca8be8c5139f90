"""Data that ships with a package: no download, no files of the user's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...config.schema import DataConfig
from .arrays import Arrays

SPLIT_SEED = 20131220   # the same fixed seed as vaekit.data.dataset's splits


class DigitsSource:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 16 grey levels): no download."""

    n_test = 297
    options = ()
    tabular = False

    def files(self, root: Path, cfg: DataConfig | None = None) -> list[Path]:
        return []   # the package's own data: nothing of the user's to fingerprint

    def load(self, root: Path, download: bool = True, timeout: float = 30, cfg: DataConfig | None = None) -> Arrays:
        from sklearn.datasets import load_digits  # noqa: PLC0415  (scikit-learn: imported only for this bundled set)

        d = load_digits()
        x = d.images.astype(np.uint8)[:, None]                    # (N, 1, 8, 8), values 0..16
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        test, train = order[: self.n_test], order[self.n_test:]
        return Arrays(x[train], d.target[train], x[test], d.target[test], 16.0, label_name="digit")
