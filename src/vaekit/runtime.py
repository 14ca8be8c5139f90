"""Where and how tensors are computed: device choice and the mixed-precision context."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from .errors import ConfigError
from .files import atomic_write_text, parse_json
from .torch_private import int_mm


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)


def cache_dir() -> Path:
    """Where vaekit keeps what it measured about this machine: $VAEKIT_CACHE, else $XDG_CACHE_HOME/vaekit,
    else ~/.cache/vaekit."""
    if os.environ.get("VAEKIT_CACHE"):
        return Path(os.environ["VAEKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaekit"


def machine_key() -> str:
    """_machine_key of this machine, now (the thread count may change)."""
    return _machine_key(_cpuinfo())


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:   # not Linux: what the platform module says of the processor
        return f"model name: {platform.processor()} {platform.machine()}"


def _machine_key(cpuinfo: str) -> str:
    """The same CPU model and flags, threads and torch build give the same key."""
    lines = [line for line in cpuinfo.splitlines() if line.startswith(("model name", "flags"))][:2]
    text = "\n".join([*lines, torch.__version__, str(torch.get_num_threads())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def _cpu_has_bf16() -> bool:
    """bf16 matrix units that pay: AMX runs bf16 matmuls 2-4x faster than fp32, but some CPUs
    with AVX512-BF16 alone run them at half the fp32 speed (measured: 166 vs 317 GFLOP/s on a
    2-core Xeon). So where the flags are present, time products each way, once per machine (_measured_once)."""
    return _measured_once("bf16", ("avx512_bf16", "amx_bf16"), torch.bfloat16, torch.float32)


@functools.cache
def cpu_int8_is_faster() -> bool:
    """int8 products (torch._int_mm: AVX512-VNNI, AVX-VNNI or AMX) at least 1.25x faster than bf16 ones here, or than
    float32 where bf16 does not pay. Measured on this project's 2-core AMD EPYC: 2500 x 400 x 784, 1,790 int8
    Gop/s against 828 bf16 GFLOP/s."""
    return _measured_once("int8", ("avx512_vnni", "avx_vnni", "amx_int8"), torch.int8,
                          torch.bfloat16 if _cpu_has_bf16() else torch.float32)


def _measured_once(name: str, flags: tuple[str, ...], fast: torch.dtype, slow: torch.dtype) -> bool:
    """Whether products in `fast` beat `slow` by 1.25x on this CPU, where it has one of `flags`: timed once per
    machine and cached on disk (cache_dir()/precision.json), so identical runs never differ because the machine
    happened to be busy when one of them started."""
    cpuinfo = _cpuinfo()
    if not any(flag in cpuinfo for flag in flags):
        return False
    # bf16's answer keeps the key it had before int8 was measured too, so earlier caches stay valid
    path, key = cache_dir() / "precision.json", _machine_key(cpuinfo) + ("" if name == "bf16" else f":{name}")
    try:
        cached = parse_json(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if isinstance(cached.get(key), bool):
        return cached[key]
    answer = _is_faster(fast, slow)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**cached, key: answer}, indent=1) + "\n")
    except OSError:
        pass  # a read-only home: decided again by the next process
    return answer


def _is_faster(fast: torch.dtype, slow: torch.dtype, rounds: int = 5) -> bool:
    """`fast` at least 1.25x faster than `slow`: medians over interleaved rounds, so a neighbour's load hits both."""
    a, b = [], []
    try:
        for _ in range(rounds):
            a.append(_seconds_per_matmul(fast))
            b.append(_seconds_per_matmul(slow))
    except (RuntimeError, NotImplementedError):   # a build without that product on this CPU (torch._int_mm)
        return False
    return statistics.median(a) < 0.8 * statistics.median(b)


def _seconds_per_matmul(dtype: torch.dtype, n: int = 512, repeats: int = 3) -> float:
    g = torch.Generator().manual_seed(0)   # a private generator: timing must not move the run's RNG stream
    a, b = torch.randn(2 * n, n, generator=g), torch.randn(n, n, generator=g)
    if dtype == torch.int8:
        a, b = (a * 40).to(dtype), (b * 40).to(dtype)
        if int_mm() is None:
            raise NotImplementedError("no int8 products in this torch")
        product = functools.partial(int_mm(), a, b)
    else:
        a, b = a.to(dtype), b.to(dtype)
        product = functools.partial(torch.matmul, a, b)
    product()  # warm-up: first-call dispatch and packing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - t0)
    return best


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20   # glibc's largest: blocks under 32 MiB come from the heap, and are reused once freed
TRIM_THRESHOLD = 128 << 20  # the freed top of the heap returns to the system only beyond 128 MiB


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc (once per process; Linux with glibc only) to keep freed blocks of up to 32 MiB for reuse.

    A compiled chunk of the k = 5,000 estimate allocates its few-MiB buffers afresh on every call; with glibc's
    adaptive thresholds they kept going back to the system and every call page-faulted them in again. Measured on
    this project's 2-core AMD EPYC, one 2,500-row chunk (784-400-20 decoder, int8 products): 2.4-6.9 ms from call
    to call before, 1.9-2.1 ms after; bf16 products 3.4-3.5 ms before, 2.4-3.0 ms after. The cost: up to
    TRIM_THRESHOLD of freed memory stays with the process. Returns whether the setting took."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the hardware computes it natively, else 'fp32'."""
    if precision != "auto":
        return precision
    fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_bf16()
    return "bf16" if fast else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast for matrix products (AMX / tensor cores); parameters stay fp32 and the
    distributions upcast before any log-density or reduction."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_sample() -> tuple[float, int, float] | None:
    """(now, busy jiffies of the whole machine from /proc/stat, this process's CPU seconds): two of them give how
    many CPUs the other processes left idle in between (idle_between); None where /proc/stat is absent. About 30 us."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    own = os.times()
    return time.monotonic(), sum(values[:8]) - values[3] - values[4], own.user + own.system


def idle_between(start, end) -> float | None:
    """How many CPUs other processes left idle between two cpu_sample()s (this process's own CPU time is not
    theirs: training at full speed does not count as load)."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    others = (end[1] - start[1]) / os.sysconf("SC_CLK_TCK") - (end[2] - start[2])   # busy CPU-seconds of the others
    return max(0.0, (os.cpu_count() or 1) - max(others, 0.0) / (end[0] - start[0]))


def idle_cpus(seconds: float = 0.2) -> float | None:
    """How many CPUs other processes leave idle over `seconds` (from /proc/stat, less this process's own CPU
    time from os.times()); None where /proc/stat is absent."""
    start = cpu_sample()
    time.sleep(seconds)
    return idle_between(start, cpu_sample())


def threads_for(idle: float, allowed: int, share: int = 1) -> int:
    """The threads to use where `idle` CPUs are free, at most `allowed`, shared by `share` processes: a thread only
    where a core is free (+0.25: a core 75% idle counts as free)."""
    return max(1, min(allowed, round(idle / share + 0.25)))


def resolve_threads(requested: int | None, device: torch.device, idle: float | None = -1.0, share: int = 1) -> int:
    """The intra-op threads to train with: `requested`, else as many as this process may use that are idle now,
    divided among the `share` processes of this machine that train together (--nproc: each its part of the cores;
    2 processes of 2 threads on 2 cores ran at 7.5-9k images/s, against 18.5k with 1 thread each).

    Measured on this project's 2-core machine (784-400-20 VAE, fp32): idle, 2 threads 31k img/s and 1 thread
    23k; with another process spinning on one core, 2 threads collapse to 8-9k (OpenMP threads wait on the
    busy core) while 1 thread keeps 22-23k. So a thread is used only where a core is free; on this machine
    the choice did not change a single bit of the trained weights (1 vs 2 threads, fp32 and bf16). On the Intel Xeon with
    AMX it does (training.threads says by how much)."""
    if requested is not None:
        return requested
    allowed = max(1, usable_cpus() // share)
    if device.type != "cpu":
        return min(allowed, torch.get_num_threads())
    idle = idle_cpus() if idle == -1.0 else idle   # -1: measure now
    if idle is None:
        return min(allowed, torch.get_num_threads())
    return min(torch.get_num_threads(), threads_for(idle, allowed, share))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as taskset or a container sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def most_processes(device: str) -> tuple[int, str]:
    """(the most training processes this machine runs at once, what bounds them): one per GPU where training runs on
    CUDA, else one per usable CPU (more share cores and only wait on each other)."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    return usable_cpus(), "CPUs this process may use"


def _import_dynamo() -> None:
    import torch._dynamo  # noqa: F401, PLC0415  (imported here, in a thread, so that the import overlaps data loading)


_IMPORTING: list[threading.Thread] = []   # the background import, if one was started


def warm_up_compiler() -> None:
    """torch.compile imports torch._dynamo (about 1 s in torch 2.13): start that import in a background thread
    now, so it runs while the data load instead of after. Call compiler_ready() before torch.compile."""
    if "torch._dynamo" not in sys.modules and not _IMPORTING:
        thread = threading.Thread(target=_import_dynamo, name="vaekit-import-dynamo", daemon=True)
        _IMPORTING.append(thread)
        thread.start()


def compiler_ready() -> None:
    """Wait for warm_up_compiler's import to finish: torch.compile importing the same modules in this thread at the
    same time is an import deadlock (Python raises _DeadlockError)."""
    while _IMPORTING:
        _IMPORTING.pop().join()
