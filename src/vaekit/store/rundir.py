"""What makes a folder a vaekit run, and who may write it.

- A marker file (`.vaekit-run`) says a folder is a run; vaekit never writes into a folder that holds
  other files without one (a user's own config.json or report.html is never overwritten).
- An advisory lock (`.lock`, fcntl.flock) is held for the life of a training process: a second trainer,
  or a resume while the run trains, gets a one-line error naming the process. The kernel drops the
  lock when its process dies, however it dies, so a stale lock is taken over without a step.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..errors import CheckpointError
from ..files import atomic_write_text

try:
    import fcntl
except ImportError:   # not a POSIX system (Windows): runs are not locked there
    fcntl = None

MARKER, LOCK = ".vaekit-run", ".lock"


def is_run(run_dir: Path) -> bool:
    """A vaekit run: the marker, or (runs written before the marker) config.json beside checkpoint/."""
    run_dir = Path(run_dir)
    return (run_dir / MARKER).is_file() or ((run_dir / "config.json").is_file() and (run_dir / "checkpoint").is_dir())


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a --run-dir that is a file, or a folder holding files that are not a vaekit run's."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"--run-dir {run_dir} is a file; give a new or empty folder")
    if not run_dir.is_dir() or is_run(run_dir):
        return
    others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
    if others:
        raise CheckpointError(f"--run-dir {run_dir} already holds files that are not a vaekit run ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}); give a new or empty folder")


def mark(run_dir: Path) -> None:
    if not (Path(run_dir) / MARKER).is_file():
        atomic_write_text(Path(run_dir) / MARKER, json.dumps({"format": "vaekit-run", "version": 1}) + "\n")


class RunLock:
    """An exclusive advisory lock on a run directory, for as long as this object is held."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointError(f"{self.path.parent} is being trained by process {holder}; wait for it to finish, "
                                      "or stop it first") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)   # closing drops the flock; the file stays (removing it would race a new locker)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
