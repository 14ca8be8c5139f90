"""Where and how tensors are computed: device choice and the mixed-precision context."""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)


@functools.cache
def _cpu_has_bf16() -> bool:
    """bf16 matrix units that pay: AMX runs bf16 matmuls 2-4x faster than fp32, but some CPUs
    with AVX512-BF16 alone run them at half the fp32 speed (measured: 166 vs 317 GFLOP/s on a
    2-core Xeon). So where the flags are present, time one product each way (about 30 ms, once)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    return _seconds_per_matmul(torch.bfloat16) < 0.8 * _seconds_per_matmul(torch.float32)


def _seconds_per_matmul(dtype: torch.dtype, n: int = 512, repeats: int = 5) -> float:
    a, b = torch.randn(2 * n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: first-call dispatch and packing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


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
