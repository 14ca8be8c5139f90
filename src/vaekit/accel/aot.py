"""The training step compiled ahead of time: step.whole_step (forward, loss, gradients, the finite check and Adam)
built once per machine and model by AOTInductor into a shared library, kept in the cache, and loaded by later runs
in milliseconds, with no compiler in the process.

Why: torch.compile compiles in every process. On this project's 2-core AMD EPYC its import, tracing and (warm
cache) code loading cost 4-5 s per run, more than its faster steps save in a 5-second run (the mnist-fast preset),
so short runs stayed eager. Loading a built step takes 2 ms and imports nothing (torch._C's package loader).
Measured there (mnist-fast's network, batch 256, bf16): 1.75-1.8 ms per step against about 2.9 ms eager.

How: the step is traced as a pure function of its tensors (torch.func's gradients through functional_call, traced
by make_fx with fake tensors), exported, and compiled by AOTInductor with fallback_random, so its noise comes from
torch's own generator in the order eager draws it (resumes stay exact). The weights, Adam's moments and step
counts come back as new tensors that take the old ones' places (no copy). Every buffer and frozen weight is an
input, never a constant: a package holds code, not values.

The key (package_key) names everything that shapes the graph: the configuration (less what only schedules the
run: epochs, learning rate...), the training set's size, the weights' names and shapes, the batch's shape, the
precision, vaekit's source and that of any model class from elsewhere, torch's version, this CPU's model and
flags, and the thread count (the kernels are built for both). Before a package's first step in a process, its
loss terms are checked against the eager forward pass on the same batch and noise; a package that disagrees is
deleted and the run goes on without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import in_one_line
from ..files import atomic_write_bytes, atomic_write_text
from ..runtime import cache_dir, keep_freed_memory, machine_key, resolve_device
from ..torch_private import aoti_compile_and_package, aoti_runner

FORMAT = 1   # of the packages: change it when what goes into one changes
# the first step's loss terms: relative difference from the eager forward pass at most this, by precision (bf16's
# rounding moved a VampPrior's KL sum by 0.15% between the fused graph and eager torch, mnist-30min's network)
AGREEMENT = {"fp32": 1e-3, "bf16": 1e-2}
KEEP = 32          # packages kept in the cache (about 2-3 MB each), the most recently used: older ones go at a build
UNAVAILABLE = ".unavailable"   # beside a package's path: why that step cannot be built (an earlier build found out)


class Unavailable(Exception):
    """This step cannot be built ahead of time (an operation AOTInductor cannot compile, a buffer it updates...)."""


def ahead_of_time_possible(config, world) -> bool:
    """Whether a run could take the step compiled ahead of time: one process, on a CPU, the joint schedule."""
    return not world.distributed and config.train.schedule == "joint" and resolve_device(config.train.device).type == "cpu"


def config_material(config) -> dict:
    """What of a RunConfig goes into a package's key: the model, and the data and training settings less those whose
    metadata says they do not shape the step (shapes_step=False: epochs, learning rate, seed, where the data is...)."""
    return {part: {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
                   if f.metadata.get("shapes_step", True)}
            for part, section in (("model", config.model), ("data", config.data), ("train", config.train))}


@functools.cache
def _source_digest(files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode())
        try:
            h.update(Path(name).read_bytes())
        except OSError:
            h.update(b"unreadable")
    return h.hexdigest()


def source_digest(module: torch.nn.Module, loss_fn: Callable) -> str:
    """A digest of vaekit's source and of every other file that defines one of the model's classes or the loss."""
    package = Path(__file__).resolve().parents[1]   # vaekit/, this file being vaekit/accel/aot.py
    files = {str(p) for p in package.rglob("*.py")}
    for obj in [*(type(m) for m in module.modules()), loss_fn]:
        try:
            files.add(str(Path(inspect.getsourcefile(obj)).resolve()))
        except (TypeError, OSError):   # built in, or made at run time: its module's name stands in for its file
            files.add(f"<{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}>")
    return _source_digest(tuple(sorted(files)))


def package_key(material: dict, module: torch.nn.Module, loss_fn: Callable, inputs: dict) -> str:
    """The cache key of one step's package (see the module's docstring)."""
    described = {name: [list(t.shape), str(t.dtype)] if isinstance(t, torch.Tensor) else t
                 for name, t in inputs.items()}
    text = json.dumps({"format": FORMAT, "config": material, "module": repr(module), "inputs": described,
                       "source": source_digest(module, loss_fn), "machine": machine_key(),
                       "python": list(sys.version_info[:2])}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def package_path(key: str) -> Path:
    return cache_dir() / "steps" / f"{key}.pt2"


def _pure(whole_step, module, names: list[str], fixed_names: list[str], ctx, betas, eps):
    """whole_step as a function of tensors only, with new tensors out instead of updates in place."""
    def step(weights, exp_avgs, exp_avg_sqs, steps, fixed, factors, x, ys, epoch):
        state = [[t.clone() for t in ts] for ts in (weights, exp_avgs, exp_avg_sqs, steps)]
        values = whole_step(module, names, *state, factors, x, ys[0] if ys else None,
                            dataclasses.replace(ctx, epoch=epoch), betas, eps, fixed=dict(zip(fixed_names, fixed, strict=True)))
        return values, *state
    return step


def build(path: Path, whole_step, module, names, fixed_names, ctx, betas, eps, args: tuple) -> None:
    """Trace, export and compile the step for `args` into the package `path` (written whole or not at all)."""
    from torch.fx.experimental.proxy_tensor import make_fx  # noqa: PLC0415  (the compiler: only when building)

    rng = torch.get_rng_state()   # tracing draws no noise from the generator, but make sure of it
    try:
        with torch.no_grad():
            graph = make_fx(_pure(whole_step, module, names, fixed_names, ctx, betas, eps), tracing_mode="fake")(*args)
    except Exception as e:   # data-dependent control flow, an operation torch.func cannot trace...
        raise Unavailable(in_one_line(e, 160)) from e
    finally:
        torch.set_rng_state(rng)

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.graph_module = graph

        def forward(self, *a):
            return self.graph_module(*a)

    with warnings.catch_warnings():   # torch's own deprecation notices from inside export (torch 2.13)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            exported = torch.export.export(Traced(), args, strict=False)
        except Exception as e:
            raise Unavailable(f"export: {in_one_line(e, 160)}") from e
        if exported.graph_signature.user_inputs_to_mutate:   # a buffer the step updates: it would have to come back
            raise Unavailable("the step updates a buffer in place")
        with tempfile.TemporaryDirectory(prefix="vaekit-step-") as d:
            built = Path(d) / "step.pt2"
            package = aoti_compile_and_package()
            if package is None:
                raise Unavailable("this torch has no AOTInductor packaging")
            package(exported, package_path=str(built), inductor_configs={"fallback_random": True})
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, built.read_bytes())


def prune(folder: Path, keep: int = KEEP) -> None:
    """Delete all but the `keep` most recently used packages in `folder` (a package's time is its last load): every
    change of vaekit or torch makes new keys, and the old packages would pile up."""
    try:
        packages = sorted([*folder.glob("*.pt2"), *folder.glob(f"*{UNAVAILABLE}")], key=lambda p: p.stat().st_mtime,
                          reverse=True)
    except OSError:
        return
    for old in packages[keep:]:
        _remove(old)


def _remove(path: Path) -> None:
    """Delete `path` if it can be (a read-only cache keeps its files; nothing depends on their going)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def load(path: Path):
    """The package's runner: torch._C's loader (private, but it imports no compiler: 2 ms here), else the public
    torch._inductor.aoti_load_package's (imports Inductor)."""
    return aoti_runner(str(path))


class Package:
    """One built step for one batch shape: run() takes the flat inputs, returns the flat outputs."""

    def __init__(self, path: Path, runner):
        self.path, self.runner, self.checked = path, runner, False

    def run(self, flat: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.runner.run(flat)


class AheadOfTime:
    """The packages of one run's Step, by batch rows: loaded from the cache, else built into it. Given to a Step only
    where the run takes the compiled step, so that what the cache holds changes how long a run takes, never what it
    computes. log: where the notes go."""

    def __init__(self, material: dict, log=print):
        self.material, self.log = material, log
        self.packages: dict[int, Package | None] = {}
        self.rebuilt: set[int] = set()   # batch rows whose package was dropped and built again in this process

    def package(self, rows: int, make: Callable[[], tuple[Path, Callable[[Path], None]]]) -> Package | None:
        """The package for full batches of `rows`, or None (it cannot be built here). make(): its path and the
        function that builds it."""
        if rows in self.packages:
            return self.packages[rows]
        path, build_into = make()
        found = None
        if path.exists():
            try:
                found = Package(path, load(path))
            except Exception as e:   # a truncated or foreign file: built again
                self.log(f"note: the compiled step {path} does not load ({type(e).__name__}); building it again")
                _remove(path)
            else:
                with contextlib.suppress(OSError):   # used now: prune() keeps the packages used last
                    path.touch()
        refused = path.with_suffix(UNAVAILABLE)   # what an earlier build found: this step cannot be built
        if found is None and refused.exists():
            with contextlib.suppress(OSError):
                self.log(f"note: the step cannot be compiled ahead of time ({refused.read_text().strip()}; found "
                         f"before, {refused}); compiling it in this process instead")
        elif found is None:
            found = self._build(rows, path, build_into, refused)
        if found is not None:
            self.log(f"batches of {rows}: the training step compiled ahead of time ({path})")
            keep_freed_memory()   # its outputs are new tensors each step: reused blocks, not fresh pages (1.3x here)
        self.packages[rows] = found
        return found

    def _build(self, rows: int, path: Path, build_into: Callable[[Path], None], refused: Path) -> Package | None:
        self.log(f"building the training step for batches of {rows} ahead of time (once for this model on this "
                 f"machine: about 10-20 s) into {path}")
        try:
            build_into(path)
            prune(path.parent)
            return Package(path, load(path))
        except Unavailable as e:
            self.log(f"note: the step cannot be compiled ahead of time ({e}); compiling it in this process instead")
            with contextlib.suppress(OSError):   # the next run of this model need not trace it again to learn so
                refused.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(refused, f"{e}\n")
        except Exception as e:   # no C++ compiler, an operation AOTInductor lacks...
            self.log(f"note: compiling the step ahead of time failed ({in_one_line(e)}); compiling it in this "
                     "process instead")
        return None

    def drop(self, rows: int, why: str) -> bool:
        """Delete the package for `rows` (it disagreed with the eager step, or did not run on the model's tensors: a
        stale or foreign cache entry). Returns whether to build it again now (once per process): the run then takes
        the step it would have taken with a clean cache."""
        package = self.packages.pop(rows, None)
        if package is not None:
            _remove(package.path)
        again = rows not in self.rebuilt
        self.rebuilt.add(rows)
        self.log(f"note: the compiled step {package.path if package else ''} {why}; deleted, "
                 + ("building it again" if again else "training without it"))
        if not again:
            self.packages[rows] = None
        return again


def agrees(values: torch.Tensor, reference: torch.Tensor, precision: str) -> bool:
    """Whether a package's loss terms (and finite flag) match the eager forward pass's within AGREEMENT."""
    tolerance = AGREEMENT.get(precision, max(AGREEMENT.values()))
    if bool(values[3] == 1.0) != bool(torch.isfinite(reference).all()):
        return False
    if values[3] != 1.0:
        return True
    return all(math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance) for a, b in
               zip(values[:3].tolist(), reference.tolist(), strict=True))
