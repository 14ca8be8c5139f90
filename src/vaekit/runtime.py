"""Where and how tensors are computed: device choice and the mixed-precision context."""

from __future__ import annotations

import contextlib

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


def autocast(device: torch.device, precision: str):
    """bf16 autocast for matrix products (AMX / tensor cores); parameters stay fp32 and the
    distributions upcast before any log-density or reduction."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
