"""The training step compiled, for speed alone: one class, CompiledStep, that training.step.Step hands its full
batches to when a run compiles (--compile on, or auto for a long run). Every path here computes the eager step's
numbers, within rounding, from the same noise; what it changes is how long a step takes.

Three paths, tried in this order for a full batch:
1. the step built ahead of time (accel.aot: AOTInductor, loaded from the cache or built into it; on a CPU, in one
   process, with vaekit's FusedAdam): forward, loss, gradients, the finite check and Adam as one loaded kernel
   package, no compiler in the process;
2. the same one graph compiled by torch.compile in the process (whole_step);
3. forward and backward compiled (loss_and_sums), Adam after it.
Each falls to the next with a one-line note where it cannot run; a batch of another size (the epoch's last) runs
eagerly rather than costing a compile.

Why (measured on this project's 2-core AMD EPYC, mnist-fast's 784-400-20 network, batch 256, bf16; whole epochs of
`vaekit train`, interleaved, 2026-11-26): about 130k images/s in one graph against 80-90k eager. Inductor fuses the
likelihood, the KL, their gradients and the optimiser into about 13 loops around the matrix products, where eager
torch launches about 150 kernels. The split form was no faster than eager there (72-84k): two graphs with their
guards, and Adam's separate pass over every weight. A compile costs 7-8 s on a cold cache and about 3 s once
Inductor has it on disk, so 'auto' compiles only runs long enough to repay it (COMPILE_MIN_STEPS); the step built
ahead of time removes that cost from every run after the first.

The noise is drawn by the eager generator (Inductor's fallback_random), so the RNG streams, and with them a resume,
stay exact.
"""

from __future__ import annotations

import dataclasses
import time
import types
from collections.abc import Callable

import torch

from ..config.schema import COMPILE_MODES
from ..errors import ConfigError, in_one_line
from ..runtime import compiler_ready
from . import aot
from .adam import step_factors

COMPILE_MIN_STEPS = 10_000   # 'auto' compiles a run with at least this many steps left (a minute or more of eager steps)
BACKEND = "inductor"         # torch.compile's backend (the tests use aot_eager: the same graphs, no code generation)


@dataclasses.dataclass(frozen=True)
class EagerStep:
    """What CompiledStep compiles: the eager step's functions (vaekit.training.step), given rather than imported, so
    that the speed machinery depends on the training step and never the other way round."""

    loss_and_sums: Callable       # (terms_of, x, y, ctx, scale) -> (loss, TERMS' sums)
    forward_backward: Callable    # (terms_of, x, y, ctx, scale, compute=None) -> TERMS' sums, gradients accumulated
    whole_step: Callable          # forward, gradients, the finite check and Adam: one pure-ish function to compile


class CompiledStep:
    """The compiled paths of one run's step. terms_of: the model and its loss (DDP-wrapped with several processes);
    module: the unwrapped one; optimizer: FusedAdam for the one-graph paths, else None; full_rows: the rows of a full
    batch this process computes; ahead: the packages built ahead of time (accel.aot; given only where the run may take
    them)."""

    def __init__(self, eager: EagerStep, terms_of, module, optimizer, world, full_rows: set[int],
                 ahead: aot.AheadOfTime | None, why_not_one_graph: str = "", log=print):
        self.eager, self.terms_of, self.module, self.world, self.full_rows, self.log = \
            eager, terms_of, module, world, full_rows, log
        # torch.compile at the first call (importing the compiler costs about 1 s: not where the ahead-of-time step runs)
        self._compiled_fn = _Compiled(eager.loss_and_sums)
        # forward, backward and Adam in one graph where the optimiser is vaekit's FusedAdam (its state is tensors the
        # graph updates in place), on the module itself (with several processes the graph sums the gradients, not
        # DDP); else (or where it fails to compile) the graph above, then Adam
        self.optimizer = optimizer
        one_graph = optimizer is not None and not why_not_one_graph
        if optimizer is not None and why_not_one_graph:
            log(f"note: the one-graph step (forward, backward and Adam) is not tried for this model ({why_not_one_graph}); "
                "compiling forward and backward alone")
        self._whole_fn = _Compiled(eager.whole_step, fullgraph=True) if one_graph else None
        # (not with the tests' backend, which stands in for Inductor to spare them its code generation)
        self._ahead = ahead if one_graph and BACKEND == "inductor" else None
        self._tried = self._whole_tried = False
        self._ahead_seconds = 0.0   # loading or building the packages built ahead of time
        self.split_compiled = True   # False once the split graph failed to compile (the eager step from then on)
        if one_graph:
            names = {id(p): name for name, p in module.named_parameters()}
            self._weights = [p for p in optimizer.params if p.requires_grad]
            self._names = [names[id(p)] for p in self._weights]
            trained = set(self._names)
            # everything else the module holds, for the ahead-of-time step: inputs of its graph, never constants
            self._fixed = {name: t for name, t in [*module.named_parameters(), *module.named_buffers()]
                           if name not in trained}

    @property
    def one_graph(self) -> bool:
        """Whether full batches run as one compiled graph, the optimiser's update included (see update())."""
        return self._whole_fn is not None or self.ahead_of_time

    @property
    def ahead_of_time(self) -> bool:
        """Whether full batches run the step compiled ahead of time (for at least one batch size so far)."""
        return self._ahead is not None and any(p is not None for p in self._ahead.packages.values())

    @property
    def build_seconds(self) -> float:
        """Seconds spent so far compiling the step, or loading or building its packages (each first call, whole): the
        run's throughput leaves them out, and says them on a line of their own."""
        return self._compiled_fn.seconds + (self._whole_fn.seconds if self._whole_fn is not None else 0.0) + \
            self._ahead_seconds

    def update(self, x: torch.Tensor, y: torch.Tensor | None, ctx,
               shard: tuple[int, int, int] | None = None) -> torch.Tensor | None:
        """The whole step of a full batch as one compiled graph: forward, backward, and the optimiser's update at its
        current learning rate, taken only if the loss terms and gradients are finite (the guard's skipped step).
        Returns TERMS' sums and the finite flag, (4,); None where this batch takes the split path (forward_backward,
        then the optimiser), as a batch of another size does, or every batch once the graph failed to compile. shard:
        (lo, hi, n), the rows of a global batch of n that x holds (several processes)."""
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
            with torch.no_grad():   # (several processes: the caller holds batch_shard)
                return self._whole_fn(self.module, self._names, self._weights,
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
            path = aot.package_path(aot.package_key(self._ahead.material, self.module, self.terms_of.loss_fn, inputs))
            return path, lambda into: aot.build(into, self.eager.whole_step, self.module, self._names, list(self._fixed), ctx,
                                                betas, eps, args)

        first = len(x) not in self._ahead.packages
        t0 = time.perf_counter()
        package = self._ahead.package(len(x), plan)
        if first:
            self._ahead_seconds += time.perf_counter() - t0
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
                reference = self.eager.loss_and_sums(self.terms_of, x, y, ctx, None)[1]
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

    def forward_backward(self, x, y, ctx, scale):
        """forward_backward of a batch, its forward and loss compiled for full batches; eagerly for other sizes, or
        every batch once the compile failed (with a note)."""
        eager = self.eager.forward_backward
        if not self.split_compiled or len(x) not in self.full_rows:
            return eager(self.terms_of, x, y, ctx, scale)
        first, self._tried = not self._tried, True
        ctx = _epoch_as_tensor(ctx)
        try:
            return eager(self.terms_of, x, y, ctx, scale, self._compiled_fn)
        except Exception as e:   # no C++ compiler, an unsupported operation...: the same step, eagerly
            if not first:
                raise
            self.split_compiled = False
            for p in self.terms_of.parameters():
                p.grad = None    # whatever a half-run compiled step left behind
            self.log(f"note: torch.compile failed here ({in_one_line(e)}); training "
                     "eagerly (the same numbers, slower); pass --compile off to skip the attempt")
            return eager(self.terms_of, x, y, ctx, scale)


def _epoch_as_tensor(ctx):
    """ctx with its epoch as a tensor input: as a float the graph would hold it as a constant and recompile every
    step."""
    return dataclasses.replace(ctx, epoch=torch.tensor(ctx.epoch, dtype=torch.float64))


class _Compiled:
    """fn compiled by _compile at its first call: torch.compile imports the compiler, which a run whose steps all
    come from the ahead-of-time packages never needs."""

    def __init__(self, fn, fullgraph: bool = False):
        self.fn, self.fullgraph, self.compiled = fn, fullgraph, None
        self.seconds = 0.0   # the first call's: torch.compile compiles then

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            t0 = time.perf_counter()
            self.compiled = _compile(self.fn, fullgraph=True) if self.fullgraph else _compile(self.fn)
            try:
                return self.compiled(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
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
