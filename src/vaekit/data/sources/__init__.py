"""Data sources (the SOURCES registry): where examples come from, as numpy arrays.

    arrays.py   Arrays, what every source's load() returns; class numbering
    download.py fetch(): the one download-and-checksum helper
    idx.py      IDX files (MNIST, Fashion-MNIST): read, validated, downloaded from the official mirrors
    bundled.py  scikit-learn's 8x8 digits (no download)
    files.py    the user's files: a folder of images, .npy/.npz arrays, a CSV table
    prepared.py any image source written once as 8-bit rows (vaekit prepare), read a batch at a time

A source has load(root, download, timeout, cfg) -> Arrays; `options` names the DataConfig fields it
reads; `tabular` marks rows to standardise (a Gaussian likelihood by default). vaekit.data.dataset turns
Arrays into tensors and splits.
"""

from __future__ import annotations

from .arrays import Arrays, class_ids
from .bundled import DigitsSource
from .files import ArraySource, CSVSource, FolderSource
from .idx import FASHION_MNIST, MNIST, IDXFile, IDXSource, read_idx
from .prepared import PreparedSource

# name -> source (see the module docstring for what a source provides)
SOURCES = {
    "mnist": MNIST,
    "fashion-mnist": FASHION_MNIST,
    "digits": DigitsSource(),
    "folder": FolderSource(),
    "npy": ArraySource(),
    "csv": CSVSource(),
    "prepared": PreparedSource(),
}


def default_likelihood(source: str) -> str:
    """The likelihood that suits a source when none is chosen: bernoulli for images in [0, 1],
    gaussian-learned for tables (standardised, so not in [0, 1])."""
    return "gaussian-learned" if getattr(SOURCES.get(source), "tabular", False) else "bernoulli"


__all__ = ["FASHION_MNIST", "MNIST", "SOURCES", "ArraySource", "Arrays", "CSVSource", "DigitsSource", "FolderSource",
           "IDXFile", "IDXSource", "class_ids", "default_likelihood", "read_idx"]
