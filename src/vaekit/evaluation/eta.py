"""What a long estimate says while it runs: a bar with its rate and the time left on a terminal; elsewhere (a log
file, CI) a line every 10%, and nothing at all for an estimate over within 10 seconds."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

QUIET_SECONDS = 10.0   # lines start only once an estimate has run this long


class TimeLeft:
    """TimeLeft.update(images) after each batch; close() at the end. bar: True a tqdm bar, False lines every 10%,
    None: a bar where stderr is a terminal."""

    def __init__(self, total: int, what: str, bar: bool | None = None, stream=None):
        self.total, self.what, self.done, self.t0 = total, what, 0, time.perf_counter()
        self.stream = stream or sys.stderr
        bar = self.stream.isatty() if bar is None else bar
        self.bar = tqdm(total=total, unit="img", desc=what, leave=False, file=self.stream) if bar else None
        self.next_tenth = 1

    def update(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
            return
        tenth = self.done * 10 // max(self.total, 1)
        elapsed = time.perf_counter() - self.t0
        if tenth >= self.next_tenth and self.done < self.total:
            self.next_tenth = tenth + 1
            if elapsed >= QUIET_SECONDS:
                left = elapsed * (self.total - self.done) / self.done
                print(f"{self.what}: {100 * self.done // self.total}% ({self.done:,} of {self.total:,} images), "
                      f"{_duration(elapsed)} so far, about {_duration(left)} left", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
