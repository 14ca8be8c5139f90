"""The one download helper: fetch a file from the first mirror that answers, check its MD5, write it
atomically. Nothing is created on disk unless a checked file is there to write, so a failed
download leaves no empty folders behind."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from ...files import atomic_write_bytes


def fetch(mirrors: tuple[str, ...], name: str, md5: str, folder: Path, timeout: float = 30) -> tuple[Path | None, list[str]]:
    """Download mirror + name for each mirror in turn into folder/name; (path, []) on success, else
    (None, one line per mirror saying why it failed)."""
    errors = []
    for mirror in mirrors:
        try:
            with urllib.request.urlopen(mirror + name, timeout=timeout) as r:
                payload = r.read()
        except OSError as e:
            errors.append(f"{mirror}{name}: {getattr(e, 'reason', e)}")
            continue
        if hashlib.md5(payload).hexdigest() != md5:
            errors.append(f"{mirror}{name}: checksum mismatch")
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return atomic_write_bytes(folder / name, payload), []
        except OSError as e:
            return None, [f"cannot write {folder / name}: {e}"]
    return None, errors
