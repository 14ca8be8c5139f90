"""Atomic, durable file writing: the one place that writes a file which must never be seen half-written.

A file is written to a temporary name beside its destination, flushed and fsynced, given the
permissions `open()` would have given it (0644 under the usual umask; mkstemp's are 0600), and
renamed over the destination; then the folder is fsynced so that the rename survives a power cut.
Checkpoints, data downloads, figures, reports and config.json all go through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import ConfigError


def file_mode() -> int:
    """The mode open() would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (one written by a library that does not fsync, e.g. safetensors)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make renames and new entries in `folder` durable. Some file systems cannot open a folder: skip there."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_orphans(path: Path) -> None:
    """Temporary files and folders of `path` (.NAME.PID[.X].tmp) left by writers that were killed (their process is
    gone): removed, so a SIGKILL during a write, an export or a prepare leaves nothing behind for good."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)(\.[^.]+)?\.tmp$")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        m = pattern.match(sibling.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_json(text: str | bytes):
    """json.loads for text from outside (a run folder, a model folder, a request): every way it can fail is a
    ValueError, the too-deep nesting that the decoder reports as RecursionError included (a 5,000-digit number
    already is one: Python's int limit)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to be read") from None
    except ValueError as e:
        if "integer string conversion" in str(e):   # its own text advises sys.set_int_max_str_digits(): not for users
            raise ValueError(f"it holds a whole number of more than {sys.get_int_max_str_digits():,} digits") from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    remove_orphans(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def new_folder(out: str | os.PathLike, what: str):
    """Fill a new folder OUT all at once: yields a temporary folder beside it, renamed to OUT when the block ends
    without an error (else removed), so OUT is never seen half-written. OUT may exist only as an empty folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new folder for the {what}")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(out)   # the temporary folders of a killed export of the same OUT
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
