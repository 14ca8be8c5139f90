"""The training step: forward, loss and backward of one batch, eager or compiled by torch.compile.

Every model and loss goes through this one function; compiling changes how it runs, not what it computes.
Compiled, a full batch runs as one graph (whole_step): forward, loss, gradients (torch.func, so the backward pass
is part of the traced program), the NaN/Inf check and Adam's update. Inductor fuses the likelihood, the KL,
their gradients and the optimiser into about 13 loops around the matrix products, where eager torch launches
about 150 kernels. Measured on this project's 2-core AMD EPYC (mnist-fast's 784-400-20 network, batch 256, bf16;
whole epochs of `vaekit train`, interleaved, 2026-11-26): about 130k images/s in one graph against 80-90k eager.
The split form, loss_and_sums compiled and its backward and Adam run after it, was no faster than eager there
(72-84k): two graphs with their guards, and Adam's separate pass over every weight. A model torch.func or Dynamo
cannot trace (the VQ-VAE: its code prior is a GRU) takes the split form.

A compile costs 7-8 s on a cold cache and about 3 s once Inductor has it on disk, so 'auto' compiles only runs
long enough to repay it (COMPILE_MIN_STEPS).

The compiled step keeps the eager step's numbers within rounding: the noise is drawn by the same torch.randn
(Inductor's fallback_random), so the RNG streams, and with them a resume, stay exact. A batch of another size
(the epoch's last) runs eagerly instead of costing a second compile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import types
from collections.abc import Callable

import torch
from torch import nn

from ..accel import aot
from ..accel.adam import FusedAdam, adam_update, step_factors
from ..config.schema import COMPILE_MODES
from ..distributed import ALONE, World
from ..errors import ConfigError, in_one_line
from ..models.distributions import batch_shard
from ..runtime import autocast, compiler_ready
from ..torch_private import functional_all_reduce

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


class Step:
    """forward_backward for one model, loss and precision; compiled for full batches (of each of `batch_sizes`, a
    graph per size) when asked, as one graph with the optimiser's update where it can (update()); with several
    processes, each computes its rows of the global batch, and DDP (or the one graph) adds up the gradients.
    ahead: the packages of the step compiled ahead of time (vaekit.accel.aot; given only where aot.ahead_of_time_possible),
    tried first for full batches with vaekit's FusedAdam; torch.compile, where `compiled`, only where they are missing."""

    def __init__(self, model, loss_fn: Callable, precision: str, batch_sizes: tuple[int, ...], compiled: bool, log=print,
                 world: World = ALONE, optimizer=None, ahead: aot.AheadOfTime | None = None):
        self.world, self.log, self.compiled = world, log, compiled
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
        self.full_rows = {hi - lo for lo, hi in map(world.rows, batch_sizes)}
        # torch.compile at the first call (importing the compiler costs about 1 s: not where the ahead-of-time step runs)
        self._compiled_fn = _Compiled(loss_and_sums) if compiled else None
        # forward, backward and Adam in one graph where the optimiser is vaekit's FusedAdam (its state is tensors the
        # graph updates in place), on the module itself (with several processes the graph sums the gradients, not
        # DDP); else (or where it fails to compile) the graph above, then Adam
        self.optimizer = optimizer
        why_not = getattr(model, "no_one_graph", "")   # a model that says its step cannot be one graph
        one_graph = isinstance(optimizer, FusedAdam) and not why_not
        if compiled and isinstance(optimizer, FusedAdam) and why_not:
            log(f"note: the one-graph step (forward, backward and Adam) is not tried for this model ({why_not}); "
                "compiling forward and backward alone")
        self._whole_fn = _Compiled(whole_step, fullgraph=True) if compiled and one_graph else None
        # (not with the tests' backend, which stands in for Inductor to spare them its code generation)
        self._ahead = ahead if one_graph and BACKEND == "inductor" else None
        self._tried = self._whole_tried = False
        if one_graph:
            self._module = self.terms_of.module if world.distributed else self.terms_of
            names = {id(p): name for name, p in self._module.named_parameters()}
            self._weights = [p for p in optimizer.params if p.requires_grad]
            self._names = [names[id(p)] for p in self._weights]
            trained = set(self._names)
            # everything else the module holds, for the ahead-of-time step: inputs of its graph, never constants
            self._fixed = {name: t for name, t in [*self._module.named_parameters(), *self._module.named_buffers()]
                           if name not in trained}

    @property
    def one_graph(self) -> bool:
        """Whether full batches run as one compiled graph, the optimiser's update included (see update())."""
        return self._whole_fn is not None or self.ahead_of_time

    @property
    def ahead_of_time(self) -> bool:
        """Whether full batches run the step compiled ahead of time (for at least one batch size so far)."""
        return self._ahead is not None and any(p is not None for p in self._ahead.packages.values())

    def update(self, x: torch.Tensor, y: torch.Tensor | None, ctx,
               shard: tuple[int, int, int] | None = None) -> torch.Tensor | None:
        """The whole step of a full batch as one compiled graph: forward, backward, and the optimiser's update at its
        current learning rate, taken only if the loss terms and gradients are finite (the guard's skipped step).
        Returns TERMS' sums and the finite flag, (4,); None where this batch takes the split path (__call__, then
        the optimiser), as a batch of another size does, or every batch once the graph failed to compile. shard: as
        for __call__."""
        if len(x) not in self.full_rows:
            return None
        ahead = self._ahead is not None and self._ahead.packages.get(len(x), True) is not None   # (None: known missing)
        if not ahead and self._whole_fn is None:
            return None
        group = self.optimizer.param_groups[0]
        states = [self.optimizer.state_of(p) for p in self._weights]   # each step: a roll-back replaces them
        steps, betas, eps = [s["step"] for s in states], tuple(group["betas"]), group["eps"]
        factors, ctx = step_factors(steps, group["lr"], betas), _epoch_as_tensor(ctx)
        if ahead:
            values = self._ahead_update(x, y, ctx, states, factors, betas, eps)
            if values is not None or self._whole_fn is None:
                return values
        first, self._whole_tried = not self._whole_tried, True
        scale = 1.0 / shard[2] if self.world.distributed else None
        try:
            # torch.func takes the gradients; the update itself is not differentiated
            with torch.no_grad(), batch_shard(*shard) if self.world.distributed else contextlib.nullcontext():
                return self._whole_fn(self._module, self._names, self._weights,
                                      [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                                      steps, factors, x, y, ctx, betas, eps, scale)
        except Exception as e:   # an operation torch.func or Dynamo cannot trace...: the split path
            if not first:
                raise
            self._whole_fn = None
            self.log(f"note: the one-graph step (forward, backward and Adam) does not compile here ({in_one_line(e)}); "
                     "compiling forward and backward alone")
            return None

    def _ahead_update(self, x: torch.Tensor, y: torch.Tensor | None, ctx, states: list[dict], factors: torch.Tensor,
                      betas: tuple[float, float], eps: float) -> torch.Tensor | None:
        """update() by the package compiled ahead of time for this batch's rows; None where there is none. ctx: with
        its epoch as a tensor; states, factors: Adam's state of each weight and step_factors."""
        args = ([p.detach() for p in self._weights], [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                [t.detach() for t in self._fixed.values()], factors, x, [] if y is None else [y], ctx.epoch)

        def plan():
            inputs = {**dict(zip(self._names, args[0], strict=True)), **self._fixed, "x": x, "y": y,
                      "dataset_size": ctx.dataset_size, "precision": self.terms_of.precision, "betas": betas,
                      "eps": eps}
            path = aot.package_path(aot.package_key(self._ahead.material, self._module, self.terms_of.loss_fn, inputs))
            return path, lambda into: aot.build(into, whole_step, self._module, self._names, list(self._fixed), ctx,
                                                betas, eps, args)

        package = self._ahead.package(len(x), plan)
        if package is None:
            return None
        flat = [*args[0], *args[1], *args[2], *args[3], *args[4], args[5], args[6], *args[7], args[8]]
        before = None if package.checked else torch.get_rng_state()
        try:
            out = package.run(flat)
        except Exception as e:   # inputs it was not built for: a package that is not this model's (unchecked only)
            if package.checked:
                raise
            torch.set_rng_state(before)
            if self._ahead.drop(len(x), f"does not run on this model's tensors ({in_one_line(e)})"):
                return self._ahead_update(x, y, ctx, states, factors, betas, eps)   # built again, for this model
            return None
        if not package.checked:   # its loss terms against the eager forward pass's, on the same batch and noise
            after = torch.get_rng_state()
            torch.set_rng_state(before)
            with torch.no_grad():
                reference = loss_and_sums(self.terms_of, x, y, ctx, None)[1]
            if not aot.agrees(out[0], reference, self.terms_of.precision):
                torch.set_rng_state(before)
                if self._ahead.drop(len(x), f"gave loss terms {out[0][:3].tolist()} where the eager step gives "
                                            f"{reference.tolist()}"):
                    return self._ahead_update(x, y, ctx, states, factors, betas, eps)
                return None
            torch.set_rng_state(after)
            package.checked = True
        n = len(self._weights)
        with torch.no_grad():   # the new weights and Adam's state take the old ones' places
            for i, (p, state) in enumerate(zip(self._weights, states, strict=True)):
                p.data = out[1 + i]
                state["exp_avg"], state["exp_avg_sq"], state["step"] = out[1 + n + i], out[1 + 2 * n + i], out[1 + 3 * n + i]
        return out[0]

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None, ctx, shard: tuple[int, int, int] | None = None) -> torch.Tensor:
        """shard: (lo, hi, n), the rows of a global batch of n that x holds (several processes)."""
        scale = self.world.size / shard[2] if self.world.distributed else None
        with batch_shard(*shard) if self.world.distributed else contextlib.nullcontext():
            return self._run(x, y, ctx, scale)

    def _run(self, x, y, ctx, scale):
        if self._compiled_fn is None or len(x) not in self.full_rows:
            return forward_backward(self.terms_of, x, y, ctx, scale)
        first, self._tried = not self._tried, True
        ctx = _epoch_as_tensor(ctx)
        try:
            return forward_backward(self.terms_of, x, y, ctx, scale, self._compiled_fn)
        except Exception as e:   # no C++ compiler, an unsupported operation...: the same step, eagerly
            if not first:
                raise
            self._compiled_fn, self.compiled = None, False
            for p in self.terms_of.parameters():
                p.grad = None    # whatever a half-run compiled step left behind
            self.log(f"note: torch.compile failed here ({in_one_line(e)}); training "
                     "eagerly (the same numbers, slower); pass --compile off to skip the attempt")
            return forward_backward(self.terms_of, x, y, ctx, scale)


def _epoch_as_tensor(ctx):
    """ctx with its epoch as a tensor input: as a float the graph would hold it as a constant and recompile every
    step."""
    return dataclasses.replace(ctx, epoch=torch.tensor(ctx.epoch, dtype=torch.float64))


class _Compiled:
    """fn compiled by _compile at its first call: torch.compile imports the compiler, which a run whose steps all
    come from the ahead-of-time packages never needs."""

    def __init__(self, fn, fullgraph: bool = False):
        self.fn, self.fullgraph, self.compiled = fn, fullgraph, None

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            self.compiled = _compile(self.fn, fullgraph=True) if self.fullgraph else _compile(self.fn)
        return self.compiled(*args, **kwargs)


def _own_copy(fn):
    """fn with a code object of its own. Dynamo keeps compiled graphs per code object and guards them on the module
    they were traced with, so without this every Step (every model in a process: a notebook, the tests) would add
    graphs to one shared list: kept alive after their model is gone, and counted against torch's limit of 8
    recompilations, past which a fullgraph compile fails."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _compile(fn, fullgraph: bool = False):
    # fallback_random: torch.randn inside the graph stays the eager generator's, so compiled runs draw the same
    # noise as eager ones and resume exactly; dynamic=False: one graph for the full batch size (the last,
    # smaller batch runs eagerly)
    compiler_ready()
    fn = _own_copy(fn)
    if BACKEND != "inductor":
        return torch.compile(fn, dynamic=False, backend=BACKEND, fullgraph=fullgraph)
    return torch.compile(fn, dynamic=False, fullgraph=fullgraph, options={"fallback_random": True})


def should_compile(mode: str, steps_left: int, distributed: bool = False) -> bool:
    """Whether to compile the step: 'on', 'off', or 'auto' (runs with at least COMPILE_MIN_STEPS steps to go, in
    one process: with several each process pays the compile, measured only on one 2-core machine so far, 1.27x)."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile mode {mode!r} is unknown; use {', '.join(COMPILE_MODES)}")
    if mode != "auto":
        return mode == "on"
    return steps_left >= COMPILE_MIN_STEPS and not distributed
