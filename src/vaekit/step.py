"""The training step: forward, loss and backward of one batch, eager or compiled by torch.compile.

Every model and loss goes through this one function; compiling changes how it runs, not what it computes.
Inductor fuses the likelihood, the KL and their gradients into a few loops around the matrix products, and
cuts the per-step overhead of many small kernels. Measured on this project's 2-core AMD EPYC, whole epochs of
`vaekit train`: the iwae-paper preset (784-200-200-50, batch 20, fp32) 14.7k images/s eager, 17.6k compiled;
the mnist-fast preset (784-400-20, batch 256, bf16) about 84k either way. A compile costs 7-8 s on a cold
cache and 1.5-2 s once Inductor has it on disk, so 'auto' compiles only runs long enough to repay it
(COMPILE_MIN_STEPS).

The compiled step keeps the eager step's numbers within rounding: the noise is drawn by the same torch.randn
(Inductor's fallback_random), so the RNG streams, and with them a resume, stay exact. A batch of another size
(the epoch's last) runs eagerly instead of costing a second compile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable

import torch
from torch import nn

from .config import COMPILE_MODES
from .distributed import ALONE, World
from .distributions import batch_shard
from .errors import ConfigError
from .runtime import autocast, compiler_ready

COMPILE_MIN_STEPS = 10_000   # 'auto' compiles a run with at least this many steps left (a minute or more of eager steps)
BACKEND = "inductor"         # torch.compile's backend (the tests use aot_eager: the same graphs, no code generation)
TERMS = ("loss", "recon", "kl")


class LossTerms(nn.Module):
    """The model and its loss as one module (no state of its own): the forward pass DistributedDataParallel wraps."""

    def __init__(self, model, loss_fn: Callable, precision: str):
        super().__init__()
        self.model, self.loss_fn, self.precision = model, loss_fn, precision

    def forward(self, x: torch.Tensor, y: torch.Tensor | None, ctx) -> dict[str, torch.Tensor]:
        with autocast(self.model.device, self.precision):
            return self.loss_fn(self.model.given(y), x, ctx)


def forward_backward(terms_of: nn.Module, x: torch.Tensor, y: torch.Tensor | None, ctx, scale: float | None,
                     compute: Callable | None = None) -> torch.Tensor:
    """The loss of batch (x, y) and its gradients (accumulated into .grad); returns the sums over the batch of
    the loss terms TERMS, (3,), detached. The loss is the batch mean of the per-example loss, or with `scale` its
    sum times scale (a process's rows of a global batch: world size / global batch size, which DDP's average
    of the processes' gradients turns into the global mean). compute: loss_and_sums, or its compiled form."""
    loss, sums = (compute or loss_and_sums)(terms_of, x, y, ctx, scale)
    loss.backward()
    return sums


def loss_and_sums(terms_of: nn.Module, x: torch.Tensor, y: torch.Tensor | None, ctx, scale: float | None):
    """The scalar to differentiate and the (3,) sums of TERMS: the part that is compiled (one graph: backward()
    inside it would split it in two, each with its own guard checks, about 60 us per step apiece)."""
    terms = terms_of(x, y, ctx)
    loss = terms["loss"].mean() if scale is None else terms["loss"].sum() * scale
    return loss, torch.stack([terms[k].detach().float().sum() for k in TERMS])


class Step:
    """forward_backward for one model, loss and precision; compiled for full batches (of each of `batch_sizes`, a
    graph per size) when asked; with several processes, each computes its rows of the global batch and DDP
    averages the gradients."""

    def __init__(self, model, loss_fn: Callable, precision: str, batch_sizes: tuple[int, ...], compiled: bool, log=print,
                 world: World = ALONE):
        self.world, self.log, self.compiled = world, log, compiled
        self.terms_of = LossTerms(model, loss_fn, precision)
        if world.distributed:
            # no buffer broadcast before each forward: every process computes the same buffers (a VQ-VAE's EMA
            # statistics are summed over the processes by the quantiser itself)
            ddp = nn.parallel.DistributedDataParallel
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                       else {"broadcast_buffers": False})   # the name before torch 2.13
            # static_graph: the same parameters take part in every step, and DDP learns once which never do (a
            # VQ-VAE's code prior, fitted after training)
            self.terms_of = ddp(self.terms_of, device_ids=[model.device] if model.device.type == "cuda" else None,
                                static_graph=True, **no_sync)
        # the rows of a full batch this process computes, for each batch size of the run
        self.full_rows = {hi - lo for lo, hi in map(world.rows, batch_sizes)}
        self._compiled_fn = _compile(loss_and_sums) if compiled else None
        self._tried = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None, ctx, shard: tuple[int, int, int] | None = None) -> torch.Tensor:
        """shard: (lo, hi, n), the rows of a global batch of n that x holds (several processes)."""
        scale = self.world.size / shard[2] if self.world.distributed else None
        with batch_shard(*shard) if self.world.distributed else contextlib.nullcontext():
            return self._run(x, y, ctx, scale)

    def _run(self, x, y, ctx, scale):
        if self._compiled_fn is None or len(x) not in self.full_rows:
            return forward_backward(self.terms_of, x, y, ctx, scale)
        first, self._tried = not self._tried, True
        # the epoch as a tensor input: as a float the graph would hold it as a constant and recompile every step
        ctx = dataclasses.replace(ctx, epoch=torch.tensor(ctx.epoch, dtype=torch.float64))
        try:
            return forward_backward(self.terms_of, x, y, ctx, scale, self._compiled_fn)
        except Exception as e:   # no C++ compiler, an unsupported operation...: the same step, eagerly
            if not first:
                raise
            self._compiled_fn, self.compiled = None, False
            for p in self.terms_of.parameters():
                p.grad = None    # whatever a half-run compiled step left behind
            self.log(f"note: torch.compile failed here ({type(e).__name__}: {str(e).splitlines()[0][:120]}); training "
                     "eagerly (the same numbers, slower); pass --compile off to skip the attempt")
            return forward_backward(self.terms_of, x, y, ctx, scale)


def _compile(fn):
    # fallback_random: torch.randn inside the graph stays the eager generator's, so compiled runs draw the same
    # noise as eager ones and resume exactly; dynamic=False: one graph for the full batch size (the last,
    # smaller batch runs eagerly)
    compiler_ready()
    if BACKEND != "inductor":
        return torch.compile(fn, dynamic=False, backend=BACKEND)
    return torch.compile(fn, dynamic=False, options={"fallback_random": True})


def should_compile(mode: str, steps_left: int, distributed: bool = False) -> bool:
    """Whether to compile the step: 'on', 'off', or 'auto' (runs with at least COMPILE_MIN_STEPS steps to go, in
    one process: with several, each would compile its DDP-wrapped step, untested gain)."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile mode {mode!r} is unknown; use {', '.join(COMPILE_MODES)}")
    if mode != "auto":
        return mode == "on"
    return steps_left >= COMPILE_MIN_STEPS and not distributed
