"""Device and precision resolution: `auto` picks bf16 on a CPU only where bf16 matmuls are measurably faster."""

import json
import subprocess
import sys

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


@pytest.mark.parametrize("flags,bf16_seconds,int8_seconds,expected", [
    ("avx512_vnni avx512_bf16", 0.3, 0.15, True),    # int8 twice as fast as bf16 (this project's AMD EPYC)
    ("avx512_vnni avx512_bf16", 0.3, 0.28, False),   # not 1.25x faster than bf16
    ("avx512_vnni", 2.0, 0.5, True),                 # no bf16 units: against float32 (1.0 s here)
    ("", 0.3, 0.01, False),                          # no VNNI or AMX: not even timed
])
def test_int8_products_are_used_where_measured_faster(cpu, monkeypatch, flags, bf16_seconds, int8_seconds, expected):
    cpu(flags, bf16_seconds)
    times = {torch.int8: int8_seconds, torch.bfloat16: bf16_seconds, torch.float32: 1.0}
    monkeypatch.setattr(runtime, "_seconds_per_matmul", lambda dtype, **kw: times[dtype])
    runtime.cpu_int8_is_faster.cache_clear()
    try:
        assert runtime.cpu_int8_is_faster() is expected
        assert (runtime.cache_dir() / "precision.json").is_file() == bool(flags)   # measured once, kept on disk
    finally:
        runtime.cpu_int8_is_faster.cache_clear()


def test_a_build_without_int8_products_is_not_faster(cpu, monkeypatch):
    cpu("avx512_vnni avx512_bf16", 0.3)

    def missing(dtype, **kw):
        if dtype == torch.int8:
            raise RuntimeError("_int_mm: not implemented for CPU")
        return 0.3
    monkeypatch.setattr(runtime, "_seconds_per_matmul", missing)
    runtime.cpu_int8_is_faster.cache_clear()
    try:
        assert runtime.cpu_int8_is_faster() is False
    finally:
        runtime.cpu_int8_is_faster.cache_clear()


def test_the_real_int8_timing_runs():
    assert runtime._seconds_per_matmul(torch.int8, n=64, repeats=2) > 0


FAULTS_PER_CALL = """
import json, resource, torch
from vaekit import runtime
if not runtime.keep_freed_memory():
    print("null"); raise SystemExit
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [torch.ones(2 << 20) for _ in range(4)]   # four 8 MiB buffers, freed together
    del buffers
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.subprocess
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    """A compiled chunk's pattern: several buffers of a few MiB allocated, filled and freed together, call after
    call. With glibc's adaptive thresholds the freed top of the heap went back to the system and every call
    faulted its pages in again (here: 8,192 faults per call, one per 4 KiB page); after keep_freed_memory the heap
    keeps them. Counted in a fresh process: getrusage counts every thread's faults, and in the test session other
    threads' (and its heap's history) had added up to 2,048 to a call."""
    pytest.importorskip("resource")
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL], capture_output=True, text=True, check=True)
    faults = json.loads(done.stdout)
    if faults is None:
        pytest.skip("not glibc")
    assert max(faults[4:]) < 400, faults     # the first calls grow the heap; after that, (almost) no page faults


def test_an_absent_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        runtime.resolve_device("cuda")



@pytest.mark.parametrize("idle,allowed,expected", [(2.0, 2, 2), (1.1, 2, 1), (0.8, 2, 1), (0.05, 2, 1), (1.9, 1, 1)])
def test_threads_follow_the_idle_cores(monkeypatch, idle, allowed, expected):
    monkeypatch.setattr(runtime, "idle_cpus", lambda seconds=0.2: idle)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(allowed)))
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: 2)
    assert runtime.resolve_threads(None, torch.device("cpu")) == expected
    assert runtime.resolve_threads(3, torch.device("cpu")) == 3          # --threads N is kept


@pytest.mark.parametrize("idle,allowed,share,expected", [(2.0, 2, 2, 1), (4.0, 4, 2, 2), (3.0, 4, 2, 2), (1.0, 4, 2, 1),
                                                          (2.0, 2, 3, 1)])
def test_processes_of_one_machine_share_its_cores(monkeypatch, idle, allowed, share, expected):
    """--nproc N on one machine: each process its part of the idle cores (2 processes of 2 threads on 2 cores ran at
    7.5-9k images/s, with 1 thread each 18.5k); at least one thread each."""
    monkeypatch.setattr(runtime, "idle_cpus", lambda seconds=0.2: idle)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(allowed)))
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: allowed)
    assert runtime.resolve_threads(None, torch.device("cpu"), share=share) == expected


def test_torchrun_s_local_world_size_is_read(monkeypatch):
    from vaekit.distributed import from_environment
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert from_environment().local_size == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="LOCAL_WORLD_SIZE must be integers"):
        from_environment()


def test_the_idle_measurement_reads_proc_stat():
    idle = runtime.idle_cpus(0.05)
    assert idle is None or 0.0 <= idle <= (runtime.os.cpu_count() or 1) + 1e-9


def test_training_records_its_threads_and_gives_the_callers_back(tmp_path):
    from conftest import synthetic_splits
    from vaekit import DataConfig, ModelConfig, RunConfig, TrainConfig, fit

    before = torch.get_num_threads()
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,)), DataConfig("digits"), TrainConfig(epochs=1, threads=1))
    result = fit(config, tmp_path / "run", data=synthetic_splits(), progress=False, log=lambda s: None)
    assert result.history[-1]["threads"] == 1 and torch.get_num_threads() == before
