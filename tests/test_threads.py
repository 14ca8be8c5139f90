"""Threads that follow the machine during a run (vaekit.training.threads): down at once when another process takes a
core, up when two looks in a row see it free again, an explicit --threads warned about once on a busy machine; and
the CPU accounting they read (benchmarks/threads.py measures the real thing: load arriving mid-run)."""

import time

import pytest
import torch

from vaekit import runtime
from vaekit.training import threads as threads_module


@pytest.fixture
def machine(monkeypatch):
    """A 2-CPU machine whose idle CPUs between two looks are what the test says."""
    idle = []
    monkeypatch.setattr(threads_module, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads_module, "EVERY_SECONDS", 0.0)
    monkeypatch.setattr(threads_module, "idle_between", lambda a, b: idle.pop(0))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield idle
    torch.set_num_threads(before)


def test_the_count_follows_the_idle_cpus_down_at_once_and_up_on_two_looks(machine):
    lines = []
    t = threads_module.Threads(None, torch.device("cpu"), log=lines.append)
    machine.extend([1.0, 2.0, 2.0, 2.0, 1.9, 0.3])
    t.look()
    assert torch.get_num_threads() == 1 and lines[-1].startswith("threads 2 -> 1: other processes leave 1.0 of 2")
    t.look()
    assert torch.get_num_threads() == 1   # one look is not enough to go up
    t.look()
    assert torch.get_num_threads() == 2 and lines[-1].startswith("threads 1 -> 2")
    t.look()
    t.look()   # 1.9 idle: still 2 threads (a core 75% idle counts as free)
    t.look()
    assert torch.get_num_threads() == 1 and t.used() == [2, 1, 2, 1] and len(lines) == 3
    t.reset()
    assert t.used() == [1]


def test_a_core_shared_with_the_training_threads_counts_as_taken(machine):
    """Against 2 training threads, a process spinning on one core of 2 gets 0.67 of a core: 1.33 CPUs look idle, and
    one thread is what it needs (the start's rule, measured while idle, would keep 2)."""
    t = threads_module.Threads(None, torch.device("cpu"), log=lambda s: None)
    machine.extend([1.33])
    t.look()
    assert torch.get_num_threads() == 1
    assert __import__("vaekit").runtime.threads_for(1.33, allowed=2) == 2


def test_a_window_in_which_the_step_compiled_is_not_read(machine):
    """Inductor's compile workers are processes of their own: read as load, they took a core from the run that
    started them, and its numbers changed with the cache (bf16 on the Intel Xeon: 1 and 2 threads train other
    weights)."""
    t = threads_module.Threads(None, torch.device("cpu"), log=lambda s: None)
    machine.extend([0.5, 1.0])
    t.look(build_seconds=23.0)   # the step compiled since the last look: a new baseline, nothing read
    assert torch.get_num_threads() == 2 and machine == [0.5, 1.0]
    t.look(build_seconds=23.0)
    assert torch.get_num_threads() == 1 and machine == [1.0]


def test_an_explicit_count_is_kept_and_warned_about_once(machine):
    lines = []
    t = threads_module.Threads(2, torch.device("cpu"), log=lines.append)
    machine.extend([1.0, 1.0, 2.0])
    for _ in range(3):
        t.look()
    assert torch.get_num_threads() == 2 and len(lines) == 1 and lines[0].startswith("warning: --threads 2")


def test_several_processes_share_the_idle_cpus(machine, monkeypatch):
    monkeypatch.setattr(threads_module, "usable_cpus", lambda: 4)
    torch.set_num_threads(2)
    t = threads_module.Threads(None, torch.device("cpu"), share=2, log=lambda s: None)
    machine.extend([2.0])   # 2 of 4 idle, for 2 processes: 1 thread each
    t.look()
    assert torch.get_num_threads() == 1


def test_between_looks_nothing_is_read(monkeypatch):
    calls = []
    monkeypatch.setattr(threads_module, "cpu_sample", lambda: calls.append(1) or (time.monotonic(), 0, 0.0))
    t = threads_module.Threads(None, torch.device("cpu"), log=lambda s: None)
    for _ in range(1000):
        t.look()
    assert len(calls) == 1   # the one at the start: EVERY_SECONDS have not passed


def test_idle_between_counts_the_others_busy_time_not_this_process_s(monkeypatch):
    """Over 2 s the machine was busy 3 CPU-seconds, 1 of them this process's own: the others took 1 CPU."""
    import os
    tick = os.sysconf("SC_CLK_TCK")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert runtime.idle_between((10.0, 0, 5.0), (12.0, 3 * tick, 6.0)) == pytest.approx(3.0)
    assert runtime.idle_between((10.0, 0, 5.0), (12.0, 0, 6.0)) == 4.0   # only this process: all idle for others
    assert runtime.idle_between(None, (12.0, 0, 6.0)) is None
    assert runtime.threads_for(3.0, allowed=2) == 2 and runtime.threads_for(0.6, allowed=2) == 1
