"""Threads that follow the machine during a run.

The thread count chosen at the start fits the machine as it was then. When another process takes a core later,
OpenMP's threads wait on the busy core: measured on this project's 2-core Intel Xeon with AMX, `--threads 2` with
one core busy ran at 435-793 images/s where 1 thread ran 15-17k. So while training, every few seconds (after each
step a clock is read; every EVERY_SECONDS, /proc/stat too), the CPUs other processes left idle since the last look are
read from /proc/stat (about 30 us) and the count follows them: down at once, up only when two looks in a row agree,
so a passing spike does not make it flap. The rule differs from the start's (runtime.threads_for, measured while
this process sleeps): while it trains, its threads take CPU from the others too. A process spinning on one core of
this 2-core machine got 0.67 of a core against 2 training threads (3 runnable threads share 2 cores), which the
start's rule reads as a core 67% free; here a thread is kept only where less than half a core is taken by others.
Each change is logged and the epoch's record says the counts it used.

The price: on some CPUs the thread count changes the numbers. On this project's Intel Xeon with AMX, one epoch of
`--preset mnist-fast` with 1 and with 2 threads trained weights up to 0.25 apart in bf16 (3.7e-9 in fp32); on the
AMD EPYC they were bit-identical. So a run whose threads followed the machine repeats bit for bit only where the
counts did; an explicit --threads N fixes them. It is kept; when the machine is oversubscribed it is warned about
once. A compiled step keeps the count it was compiled with inside its own kernels (torch.compile and the steps built
ahead of time fix it), so only the eager parts follow; the log says so at the first change.
"""

from __future__ import annotations

import math
import time

import torch

from ..runtime import cpu_sample, idle_between, usable_cpus

EVERY_SECONDS = 2.0   # between looks at the machine


class Threads:
    """look() at any moment of the training loop (cheap unless EVERY_SECONDS have passed); used() the counts the
    epoch ran with, reset()."""

    def __init__(self, requested: int | None, device: torch.device, share: int = 1, compiled: bool = False, log=print):
        self.follow = requested is None and device.type == "cpu"
        self.watch = device.type == "cpu"
        self.requested, self.share, self.compiled, self.log = requested, share, compiled, log
        self.allowed = max(1, usable_cpus() // share)
        self.last, self.up_votes, self.warned, self.build_seconds = cpu_sample(), 0, False, 0.0
        self.counts = [torch.get_num_threads()]
        self.changed = False   # the run's first change says in its log line what a change costs

    def look(self, build_seconds: float = 0.0) -> None:
        """build_seconds: the step's compile time so far; a window in which it grew is not read (the compiler's
        worker processes are not load that training should give its cores to)."""
        if build_seconds != self.build_seconds:
            self.build_seconds, self.last, self.up_votes = build_seconds, cpu_sample(), 0
            return
        if not self.watch or self.last is None or time.monotonic() - self.last[0] < EVERY_SECONDS:
            return
        now = cpu_sample()
        idle, self.last = idle_between(self.last, now), now
        if idle is None:
            return
        current = torch.get_num_threads()
        if not self.follow:
            if self.requested is not None and not self.warned and idle / self.share < current - 0.75:
                self.warned = True
                self.log(f"warning: --threads {current} while other processes leave {idle:.1f} of "
                         f"{self.allowed * self.share} CPUs idle: threads that wait on a busy core run many times "
                         "slower (10-40x measured); leave --threads out to follow the machine")
            return
        want = max(1, min(self.allowed, math.floor(idle / self.share + 0.5)))
        self.up_votes = self.up_votes + 1 if want > current else 0
        if want < current or (want > current and self.up_votes >= 2):
            torch.set_num_threads(want)
            self.up_votes = 0
            self.counts.append(want)
            compiled = " (the compiled step keeps its own count)" if self.compiled else ""
            first = "" if self.changed else "; on some CPUs another thread count trains other weights (bf16 on an " \
                "Intel Xeon: up to 0.25 apart after one epoch): --threads N fixes the count, and the run repeats bit for bit"
            self.changed = True
            self.log(f"threads {current} -> {want}: other processes leave {idle:.1f} of "
                     f"{self.allowed * self.share} CPUs idle{compiled}{first}")

    def used(self) -> list[int]:
        """The counts since the last reset(), in order (the last is the one in use)."""
        return list(self.counts)

    def reset(self) -> None:
        self.counts = [torch.get_num_threads()]
