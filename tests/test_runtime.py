"""Device and precision resolution: `auto` picks bf16 on a CPU only where bf16 matmuls are measurably faster."""

import pytest
import torch

from vaekit import runtime
from vaekit.errors import ConfigError


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A fake /proc/cpuinfo and fake matmul timings: returns a setter for both."""
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))

    def set_cpu(flags: str, bf16_seconds: float, fp32_seconds: float = 1.0):
        (tmp_path / "cache" / "precision.json").unlink(missing_ok=True)
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor : 0\nflags : fpu sse avx512f {flags}\n")
        real_path = runtime.Path
        monkeypatch.setattr(runtime, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
        monkeypatch.setattr(runtime, "_seconds_per_matmul",
                            lambda dtype, **kw: bf16_seconds if dtype == torch.bfloat16 else fp32_seconds)
        runtime._cpu_has_bf16.cache_clear()
    yield set_cpu
    runtime._cpu_has_bf16.cache_clear()


@pytest.mark.parametrize("flags,bf16_seconds,expected", [
    ("amx_bf16 avx512_bf16", 0.3, "bf16"),   # AMX: bf16 several times faster
    ("avx512_bf16", 0.7, "bf16"),            # faster by more than 1.25x
    ("avx512_bf16", 2.0, "fp32"),            # an AVX512-BF16 CPU where bf16 is slower (measured on a 2-core Xeon)
    ("avx512_bf16", 0.9, "fp32"),            # not enough faster to pay for the casts
    ("", 0.1, "fp32"),                       # no bf16 units: not even timed
])
def test_auto_precision_follows_the_measured_speed(cpu, flags, bf16_seconds, expected):
    cpu(flags, bf16_seconds)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == expected
    assert runtime.resolve_precision("fp32", torch.device("cpu")) == "fp32"   # an explicit choice is kept


def test_the_real_timing_runs_and_returns_a_choice():
    runtime._cpu_has_bf16.cache_clear()
    assert runtime.resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    assert runtime._seconds_per_matmul(torch.float32, n=64, repeats=2) > 0


def test_an_absent_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        runtime.resolve_device("cuda")

