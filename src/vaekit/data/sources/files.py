"""Data sources that read the user's own files: a folder of images, NumPy arrays, a CSV table.

Each is an entry of vaekit.data.sources.SOURCES with `load(root, download, timeout, cfg) -> Arrays`.
They return every example; load_data holds out `cfg.test_fraction` of them as the test set
(a fixed-seed split), carves the validation set, and scales or standardises. Every problem
with a file is a one-line DataError that names the file (and the row and column) and the fix.
"""

from __future__ import annotations

import csv
import math
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, ImageOps

from ...config.schema import DataConfig
from ...errors import ConfigError, DataError
from .arrays import Arrays, class_ids

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _path(cfg: DataConfig | None, source: str, what: str, folder: bool) -> Path:
    if cfg is None or cfg.path is None:
        raise ConfigError(f"data source {source!r} reads {what}: pass --path (DataConfig(path=...))")
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass --path with {what}")
    if folder and not path.is_dir():
        raise DataError(f"{path} is a file, and the {source} source reads {what}; pass --path with the folder")
    if not folder and path.is_dir():
        raise DataError(f"{path} is a folder, and the {source} source reads {what}; pass --path with the file")
    return path


# ----------------------------------------------------------------------------- a folder of images

class FolderSource:
    """A folder of PNG/JPEG images (Pillow), resized to --image-size; labels from class sub-folder names."""

    options = ("path", "image_size")   # the DataConfig fields it reads
    tabular = False

    def files(self, root: Path, cfg: DataConfig | None = None) -> list[Path]:
        return _image_files(_path(cfg, "folder", "a folder of images", folder=True))[0]

    def load(self, root: Path, download: bool = True, timeout: float = 30, cfg: DataConfig | None = None) -> Arrays:
        """Images directly in the folder (no labels), or in class sub-folders (labels: the sorted
        sub-folder names numbered 0, 1, ...). All images share one mode: RGB if any is colour,
        else grey (alpha is dropped); without image_size they must share one size."""
        folder = _path(cfg, "folder", "a folder of images", folder=True)
        files, y, names = _image_files(folder)
        images = [_read_image(f, cfg.image_size) for f in files]
        (h, w), odd = images[0].shape[:2], [i for i, im in enumerate(images) if im.shape[:2] != images[0].shape[:2]]
        if odd:
            h2, w2 = images[odd[0]].shape[:2]
            raise DataError(f"images in {folder} differ in size ({files[0].name} is {w}x{h}, {files[odd[0]].name} is "
                            f"{w2}x{h2}); pass --image-size N to resize them all to N x N")
        colour = any(im.ndim == 3 for im in images)
        x = np.stack([np.repeat(im[..., None], 3, -1) if colour and im.ndim == 2 else im.reshape(*im.shape[:2], -1)
                      for im in images])                                    # (N, H, W, C) uint8
        return Arrays(x.transpose(0, 3, 1, 2), y, scale=255.0, class_names=names)


def _is_image(path: Path, folder: Path) -> bool:
    return (path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def _image_files(folder: Path) -> tuple[list[Path], np.ndarray | None, tuple[str, ...] | None]:
    """The image files, their labels from the class sub-folders and the sub-folder names (None, None without)."""
    top = sorted(f for f in folder.iterdir() if _is_image(f, folder))
    classes = {}
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        found = sorted(f for f in sub.rglob("*") if _is_image(f, folder))
        if found:
            classes[sub.name] = found
    if top and classes:
        raise DataError(f"{folder} holds images both at its top ({top[0].name}) and in sub-folders ({next(iter(classes))}/); "
                        "put every image in a class sub-folder, or none")
    if classes:
        files = [f for found in classes.values() for f in found]
        return files, np.repeat(np.arange(len(classes)), [len(found) for found in classes.values()]), tuple(classes)
    if not top:
        raise DataError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images (directly or in class sub-folders); "
                        "pass --path with a folder of images")
    return top, None, None


def _read_image(path: Path, size: int | None) -> np.ndarray:
    """(H, W) uint8 for a grey image, (H, W, 3) for a colour one, resized to size x size."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # camera JPEGs: the orientation the viewer shows
            if img.mode.startswith("I"):        # 16-bit grey (I;16) or 32-bit integer: convert("L") would clip to 255
                wide = np.asarray(img).astype(np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or wide.max() > 255 else 255.0
                img = Image.fromarray(np.round(wide.clip(0, top) * (255.0 / top)).astype(np.uint8))
            elif img.mode == "F":
                raise ValueError("floating-point pixels; save it as an 8- or 16-bit PNG")
            grey = ImageMode.getmode(img.mode).basemode == "L"
            img = img.convert("L" if grey else "RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path} ({e}); remove or replace the file") from None


# ----------------------------------------------------------------------------- NumPy arrays

class ArraySource:
    """NumPy arrays: an .npy of x, or an .npz with x (and optionally labels y); uint8 is divided by 255."""

    options = ("path",)
    tabular = False

    def files(self, root: Path, cfg: DataConfig | None = None) -> list[Path]:
        return [_path(cfg, "npy", "an .npy or .npz file", folder=False)]

    def load(self, root: Path, download: bool = True, timeout: float = 30, cfg: DataConfig | None = None) -> Arrays:
        """x is (N, D) rows, (N, H, W) grey images, or (N, C, H, W) images ((N, H, W, C) with C in
        1, 3, 4 is moved to channels first). uint8 is scaled by 1/255 to [0, 1]; any other numbers
        (floats, bool, wider integers) are used as they are, so choose a likelihood that fits them."""
        path = _path(cfg, "npy", "an .npy or .npz file", folder=False)
        fix = "save it with np.save(path, x) or np.savez(path, x=x, y=y)"
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
            if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
                raise ValueError("no .npy or .npz header")
            loaded = np.load(path, allow_pickle=False)
            if hasattr(loaded, "files"):  # .npz: named arrays
                with loaded:
                    if "x" not in loaded.files:
                        raise DataError(f"{path} has no array 'x' (it holds {', '.join(loaded.files) or 'nothing'}); "
                                        "save the data as x (and labels as y): np.savez(path, x=x, y=y)")
                    x, y = loaded["x"], loaded["y"] if "y" in loaded.files else None
            else:
                x, y = loaded, None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot read {path} as a NumPy file ({e}); {fix}") from None
        if x.dtype.kind not in "buif":
            raise DataError(f"{path}: x has dtype {x.dtype}, not numbers; {fix} with uint8 images or floats")
        if x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)                                    # (N, H, W, C) -> (N, C, H, W)
        elif x.ndim == 3:
            x = x[:, None]                                                 # grey (N, H, W) -> (N, 1, H, W)
        elif x.ndim not in (2, 4):
            raise DataError(f"{path}: x has shape {x.shape}; store examples along the first axis as "
                            "(N, D), (N, H, W) or (N, C, H, W)")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError(f"{path}: x holds NaN or infinite values; replace them before training")
        if y is not None:
            if y.shape != (len(x),):
                raise DataError(f"{path}: y has shape {y.shape} but x holds {len(x)} examples; y needs one label each, ({len(x)},)")
            try:
                y, names = class_ids(y)
            except DataError as e:
                raise DataError(f"{path}: y: {e}") from None
        return Arrays(x, y, scale=255.0 if x.dtype == np.uint8 else 1.0, class_names=None if y is None else names)


# ----------------------------------------------------------------------------- CSV tables

class CSVSource:
    """A CSV table with a header row: numeric columns, standardised; labels from --label-column."""

    options = ("path", "label_column")
    tabular = True   # no pixels in [0, 1]: the CLI trains it with a Gaussian likelihood by default

    def files(self, root: Path, cfg: DataConfig | None = None) -> list[Path]:
        return [_path(cfg, "csv", "a .csv file", folder=False)]

    def load(self, root: Path, download: bool = True, timeout: float = 30, cfg: DataConfig | None = None) -> Arrays:
        """Every column but the label column must hold a finite number in every row; load_data
        standardises them with the training split's mean and std (recomputed from the same file
        and split whenever a run is evaluated or sampled)."""
        path = _path(cfg, "csv", "a .csv file", folder=False)
        header, rows = _read_csv(path)
        label = cfg.label_column
        if label is not None and label not in header:
            raise DataError(f"label column {label!r} is not in {path} (its columns: {', '.join(header)}); "
                            "pass --label-column with one of them")
        features = [j for j, name in enumerate(header) if name != label]
        if not features:
            raise DataError(f"{path} has no column besides the label column {label!r}; add numeric feature columns")
        x = np.empty((len(rows), len(features)), np.float64)
        for i, (line, cells) in enumerate(rows):
            for k, j in enumerate(features):
                x[i, k] = _number(cells[j], path, line, header[j])
        y = names = None
        if label is not None:
            j = header.index(label)
            values = [cells[j].strip() for _, cells in rows]
            for (line, _), value in zip(rows, values, strict=True):
                if not value:
                    raise DataError(f"{path} line {line}: the label column {label!r} is empty; give every row a label")
            try:
                y, names = class_ids(np.array([int(v) for v in values]))
            except ValueError:
                y, names = class_ids(np.array(values))
        return Arrays(x, y, scale=None, columns=tuple(header[j] for j in features), class_names=names,
                      label_name=label or "class")


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (column names) and the data rows with their line numbers; blank lines skipped."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise DataError(f"{path} line {reader.line_num} has {len(cells)} cells but the header has "
                                    f"{len(header)} columns; give every row one value per column")
                rows.append((reader.line_num, cells))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path} as a UTF-8 CSV file ({e}); save it as comma-separated UTF-8 text") from None
    if not header or not any(header):
        raise DataError(f"{path} is empty; it needs a header row of column names and data rows")
    if all(_is_number(name) for name in header):
        raise DataError(f"the first line of {path} holds only numbers; add a header row of column names")
    for j, name in enumerate(header):
        if not name or header.index(name) != j:
            why = "has an empty name" if not name else f"repeats the name {name!r}"
            raise DataError(f"{path}: column {j + 1} of the header {why}; give every column its own name")
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    return header, rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(text: str, path: Path, line: int, column: str) -> float:
    if not text.strip():
        raise DataError(f"{path} line {line}, column {column!r} is empty; fill in or drop the row "
                        "(missing values are not supported)")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path} line {line}, column {column!r}: {text.strip()!r} is not a number; vaekit reads "
                        "numeric columns only (drop the column, or name it with --label-column)") from None
    if not math.isfinite(value):
        raise DataError(f"{path} line {line}, column {column!r}: {text.strip()!r} is not a finite number; "
                        "fill in or drop the row")
    return value
