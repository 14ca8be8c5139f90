"""SIGINT and SIGTERM during training: the loop finishes its step, saves where it stands, and stops."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path


class Interrupted(Exception):
    """SIGINT or SIGTERM: the step finished and the position was saved; the exit code is 128 + the signal."""

    def __init__(self, signum: int, where: str, run_dir: Path):
        super().__init__(where)
        self.signum, self.where, self.run_dir = signum, where, run_dir


@contextlib.contextmanager
def stop_on_signals(s):
    """SIGINT and SIGTERM set a flag the loop reads after each step (only in the main thread, where Python
    delivers signals); the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        s.stop_signal = signum
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
