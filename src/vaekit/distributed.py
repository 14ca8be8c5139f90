"""Training with several processes: torch.distributed as torchrun starts it (gloo on CPU, nccl on GPUs).

Every process draws the same random numbers: the same permutation, and the noise and binarisation of the whole
global batch, of which it keeps its own rows (distributions.batch_shard). So N processes compute, row for row, what
one process computes with the same global batch; gradients are averaged by DistributedDataParallel, and the run's
numbers equal the single-process ones up to the order of floating-point sums. The RNG states of all processes are
equal, so the checkpoint that process 0 writes resumes any number of processes.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError, VaekitError


class AnotherProcessFailed(VaekitError):
    """Another training process failed; it reports why (the command line prints nothing more for this one)."""


TIMEOUT_MINUTES = 10.0   # a collective that waits longer (a process died or hangs) fails instead of hanging


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1   # the processes on this machine, which share its CPUs

    @property
    def main(self) -> bool:
        """The process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def rows(self, n: int) -> tuple[int, int]:
        """This process's rows start:stop of a global batch of n (as equal as can be; the first get one more)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the processes (t itself when alone)."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True if any process says True (every process must call it at the same point)."""
        if not self.distributed:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=device)).item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


ALONE = World()


def from_environment() -> World:
    """The World torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), else one process."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (torchrun sets them)") from None
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process group; launch with torchrun")
    return World(rank, size, local_rank, max(1, local_size))


def start(world: World, device_name: str = "auto") -> World:
    """Join the process group (when there is more than one process): nccl where each process has a GPU, else gloo."""
    if not world.distributed or dist.is_initialized():
        return world
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    except (RuntimeError, ValueError) as e:
        raise VaekitError(f"could not join the {world.size} training processes ({str(e).splitlines()[0]}); launch "
                          "with torchrun (or vaekit train --nproc N) and check MASTER_ADDR / --rdzv-endpoint") from None
    return world


def stop(world: World, clean: bool = True) -> None:
    """Leave the process group; clean: after every process has got here (leaving while another still talks to
    the group's store can abort a process at exit: "terminate called without an active exception")."""
    if world.distributed and dist.is_initialized():
        if clean:
            world.barrier()
        dist.destroy_process_group()


def agree(world: World, error: BaseException | None) -> None:
    """Every process calls this at the same point with its own outcome (None: it went well); if any process
    failed, every process raises: its own error, or the first failed process's message. So no process waits in
    a collective for one that has given up."""
    if not world.distributed:
        if error is not None:
            raise error
        return
    outcomes: list = [None] * world.size
    dist.all_gather_object(outcomes, None if error is None else str(error) or type(error).__name__)
    if error is not None:
        raise error
    failed = next((o for o in outcomes if o is not None), None)
    if failed is not None:
        raise AnotherProcessFailed(failed)


def _group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """t summed in place over the training processes (for statistics a layer gathers while training, e.g. a
    VQ-VAE's code counts); t itself when alone. Every process must call it at the same point."""
    if _group_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def rows_of_all_processes(t: torch.Tensor) -> torch.Tensor:
    """The rows every process holds, concatenated in rank order: the whole global batch, since each process holds
    a contiguous range of it (World.rows). t itself when alone."""
    if _group_size() == 1:
        return t
    parts: list = [None] * _group_size()
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts).to(t.device)


PR_SET_PDEATHSIG = 1   # prctl(2)


def die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when the process that started it dies, even by SIGKILL, so
    that no training process is left behind waiting for its launcher (`--nproc 64` once left 41 waiting minutes after
    a killed launcher). SIGTERM, not SIGKILL: the process stops as it does on the launcher's own SIGTERM. Elsewhere,
    nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0 and os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)   # the parent died before the request was made


def lost_a_process(e: BaseException | None) -> BaseException | None:
    """The failure of a collective because another training process went away (killed, out of memory), if `e` is
    one or was raised while handling one; else None. gloo and nccl report it as a RuntimeError naming themselves, or
    as one of torch.distributed's errors."""
    while e is not None:   # also an error raised while handling one (the launcher's SIGTERM during the clean-up)
        if isinstance(e, getattr(dist, "DistError", ())) or isinstance(e, RuntimeError) and any(
                word in str(e) for word in ("gloo", "NCCL", "Connection reset", "Connection closed")):
            return e
        e = e.__cause__ or e.__context__
    return None
