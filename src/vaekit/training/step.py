"""The training step: forward, loss and backward of one batch, the same for every model and loss.

This file is the step's definition, eager: LossTerms (the model and its loss as one module), loss_and_sums,
forward_backward, and whole_step (all of one step, Adam included, as one function: what the compiled paths compile).
Step is what the training loop calls; where the run compiles, it hands full batches to accel.compiled.CompiledStep,
which changes how fast a step runs, never what it computes.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import torch
from torch import nn

from ..accel import aot
from ..accel.adam import FusedAdam, adam_update
from ..accel.compiled import CompiledStep, EagerStep
from ..distributed import ALONE, World
from ..models.distributions import batch_shard
from ..runtime import autocast
from ..torch_private import functional_all_reduce

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


def whole_step(terms_of: nn.Module, names: list[str], weights: list[torch.Tensor], exp_avgs: list[torch.Tensor],
               exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], factors: torch.Tensor, x: torch.Tensor,
               y: torch.Tensor | None, ctx, betas: tuple[float, float], eps: float,
               scale: float | None = None, fixed: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Forward, loss, gradients (torch.func, so they are part of the traced program), the finite check and Adam's
    update of `weights` (terms_of's trainable parameters, named `names`), taken only where the step is finite:
    what one step of the training loop does, as one function for torch.compile. Returns TERMS' sums and the
    finite flag, (4,). With `scale` (several processes: 1 / the global batch size) the loss is this process's rows'
    share of the global mean, and the gradients and the finite check are summed over the processes in the graph
    (torch's functional all_reduce), so every process takes the same step, as DistributedDataParallel makes it.
    fixed: other tensors of terms_of by name (buffers, frozen weights), given rather than read from the module (the
    ahead-of-time step has them as inputs, not constants)."""
    def loss_of(ws):
        as_given = {**(fixed or {}), **dict(zip(names, ws, strict=True))}
        return loss_and_sums(lambda *batch: torch.func.functional_call(terms_of, as_given, batch), x, y, ctx, scale)
    grads, (_, sums) = torch.func.grad_and_value(loss_of, has_aux=True)(weights)
    total = sums.sum()
    if scale is not None:   # one all_reduce of everything: one per gradient cost gloo 8 round trips a step
        flat = _all_reduced(torch.cat([total.reshape(1), *(g.reshape(-1) for g in grads)]))
        total = flat[0]
        grads = [part.view_as(g) for part, g in zip(flat[1:].split([g.numel() for g in grads]), grads, strict=True)]
    # as guard.step_is_finite, but a norm per gradient, which Inductor fuses into the loop that computes it (that
    # function's _foreach_norm, one kernel in eager, made the compiled step 1.5x slower here)
    finite = torch.isfinite(total + sum(torch.linalg.vector_norm(g) for g in grads)).float()
    adam_update(weights, grads, exp_avgs, exp_avg_sqs, steps, factors, finite > 0, betas, eps)
    return torch.cat([sums, finite[None]])


def _all_reduced(t: torch.Tensor) -> torch.Tensor:
    """t summed over the processes, as an operation Dynamo traces into the graph (World.sum's all_reduce is in place)."""
    if _ALL_REDUCE[0] is None:   # looked up by Step, outside the graph (Dynamo does not trace the look-up)
        raise NotImplementedError("no traceable all_reduce in this torch")   # the one graph is refused: the split step
    return _ALL_REDUCE[0](t, "sum", torch.distributed.group.WORLD)


_ALL_REDUCE: list = [None]   # torch_private.functional_all_reduce(), once several processes train


def loss_and_sums(terms_of: nn.Module, x: torch.Tensor, y: torch.Tensor | None, ctx, scale: float | None):
    """The scalar to differentiate and the (3,) sums of TERMS: the part that is compiled (one graph: backward()
    inside it would split it in two, each with its own guard checks, about 60 us per step apiece)."""
    terms = terms_of(x, y, ctx)
    loss = terms["loss"].mean() if scale is None else terms["loss"].sum() * scale
    return loss, torch.stack([terms[k].detach().float().sum() for k in TERMS])


EAGER = EagerStep(loss_and_sums, forward_backward, whole_step)


class Step:
    """forward_backward for one model, loss and precision; with several processes, each computes its rows of the
    global batch, and DDP (or the one graph) adds up the gradients. compiled: full batches (of each of `batch_sizes`)
    go to accel.compiled.CompiledStep (the one graph with the optimiser's update where it can: update()). ahead: the
    packages of the step compiled ahead of time (accel.aot; given only where aot.ahead_of_time_possible)."""

    def __init__(self, model, loss_fn: Callable, precision: str, batch_sizes: tuple[int, ...], compiled: bool, log=print,
                 world: World = ALONE, optimizer=None, ahead: aot.AheadOfTime | None = None):
        self.world, self.log = world, log
        self.terms_of = LossTerms(model, loss_fn, precision)
        if world.distributed:
            _ALL_REDUCE[0] = _ALL_REDUCE[0] or functional_all_reduce()
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
        full_rows = {hi - lo for lo, hi in map(world.rows, batch_sizes)}
        module = self.terms_of.module if world.distributed else self.terms_of
        self.fast = CompiledStep(EAGER, self.terms_of, module, optimizer if isinstance(optimizer, FusedAdam) else None,
                                 world, full_rows, ahead, getattr(model, "no_one_graph", ""), log) if compiled else None

    @property
    def compiled(self) -> bool:
        """Whether full batches run compiled (False: eager, or the compile failed and the run went on eagerly)."""
        return self.fast is not None and (self.fast.split_compiled or self.fast.one_graph)

    @property
    def one_graph(self) -> bool:
        """Whether full batches run as one compiled graph, the optimiser's update included (see update())."""
        return self.fast is not None and self.fast.one_graph

    @property
    def ahead_of_time(self) -> bool:
        """Whether full batches run the step compiled ahead of time (for at least one batch size so far)."""
        return self.fast is not None and self.fast.ahead_of_time

    @property
    def build_seconds(self) -> float:
        """Seconds spent so far compiling the step or loading its packages (0 for the eager step)."""
        return self.fast.build_seconds if self.fast is not None else 0.0

    def update(self, x: torch.Tensor, y: torch.Tensor | None, ctx,
               shard: tuple[int, int, int] | None = None) -> torch.Tensor | None:
        """The whole step of a full batch as one compiled graph (CompiledStep.update): TERMS' sums and the finite
        flag, (4,), the optimiser's step taken where finite; None where this batch takes the split path (__call__,
        then the optimiser)."""
        if self.fast is None:
            return None
        with batch_shard(*shard) if self.world.distributed else contextlib.nullcontext():
            return self.fast.update(x, y, ctx, shard)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None, ctx, shard: tuple[int, int, int] | None = None) -> torch.Tensor:
        """forward_backward of the batch: TERMS' sums, gradients accumulated. shard: (lo, hi, n), the rows of a global
        batch of n that x holds (several processes)."""
        scale = self.world.size / shard[2] if self.world.distributed else None
        with batch_shard(*shard) if self.world.distributed else contextlib.nullcontext():
            if self.fast is None:
                return forward_backward(self.terms_of, x, y, ctx, scale)
            return self.fast.forward_backward(x, y, ctx, scale)
