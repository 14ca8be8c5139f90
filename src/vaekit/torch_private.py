"""Every private torch API vaekit calls, named here and nowhere else, with the torch version it was checked against
and what vaekit does where a torch build lacks it.

Private APIs (a leading underscore) change without notice between torch releases. vaekit uses them only for speed,
or to tell tracing from running; each has a public stand-in that computes the same numbers, slower. Where one is
missing, the stand-in is used and a one-line note says so on stderr, once per process. All were checked with
torch CHECKED_WITH. Two more private names appear by name only: the ATen operator aten._int_mm in the graph that
accel/graph_rewrites.py writes (reached only through int_mm() below), and the module torch._dynamo, which
runtime.warm_up_compiler imports early because torch.compile imports it anyway.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import torch

CHECKED_WITH = "2.13.0"
_noted: set[str] = set()


def _find(module: str, name: str):
    """module.name, or None where this torch has no such module or attribute."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _missing(name: str, instead: str) -> None:
    if name not in _noted:
        _noted.add(name)
        print(f"note: this torch ({torch.__version__}) has no {name} (vaekit was checked with torch {CHECKED_WITH}); "
              f"{instead}", file=sys.stderr)


def fused_adam() -> Callable | None:
    """torch._fused_adam_: the kernel torch.optim.Adam(fused=True) runs, called without torch.optim, whose optimizers
    import the compiler when built (about 1 s per process). None: use torch.optim.Adam (the same numbers)."""
    kernel = getattr(torch, "_fused_adam_", None)
    if kernel is None:
        _missing("torch._fused_adam_", "training with torch.optim.Adam (the same numbers; about 1 s more per process)")
    return kernel


def foreach_add_(tensors: list[torch.Tensor], other) -> None:
    """torch._foreach_add_ (one kernel for a list), else a loop of add_."""
    fn = getattr(torch, "_foreach_add_", None)
    if fn is not None:
        fn(tensors, other)
        return
    _missing("torch._foreach_add_", "adding tensor by tensor")
    for t, o in zip(tensors, other if isinstance(other, list) else [other] * len(tensors), strict=True):
        t.add_(o)


def foreach_sub_(tensors: list[torch.Tensor], other: list[torch.Tensor]) -> None:
    """torch._foreach_sub_, else a loop of sub_."""
    fn = getattr(torch, "_foreach_sub_", None)
    if fn is not None:
        fn(tensors, other)
        return
    _missing("torch._foreach_sub_", "subtracting tensor by tensor")
    for t, o in zip(tensors, other, strict=True):
        t.sub_(o)


def foreach_norm(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """torch._foreach_norm: the 2-norms of a list in one fused pass, else torch.linalg.vector_norm of each."""
    fn = getattr(torch, "_foreach_norm", None)
    if fn is not None:
        return list(fn(tensors))
    _missing("torch._foreach_norm", "a norm per tensor")
    return [torch.linalg.vector_norm(t) for t in tensors]


def int_mm() -> Callable | None:
    """torch._int_mm: int8 x int8 -> int32 products (VNNI, AMX), for the likelihood's opt-in int8 products. None:
    int8 products are unavailable (the estimate says so; fp32 and bf16 are unaffected)."""
    fn = getattr(torch, "_int_mm", None)
    if fn is None:
        _missing("torch._int_mm", "int8 products are unavailable")
    return fn


def is_fake(t) -> bool:
    """torch._subclasses.fake_tensor.is_fake: whether t is a tracing placeholder (its values unknown), else False."""
    fn = _find("torch._subclasses.fake_tensor", "is_fake")
    if fn is None:
        _missing("torch._subclasses.fake_tensor.is_fake", "checks of label values run on every tensor")
        return False
    return fn(t)


def detect_fake_mode(tensors: list[torch.Tensor]):
    """torch._guards.detect_fake_mode: the fake-tensor mode of traced tensors, for the estimate's graph rewrites (they
    run inside Inductor, which has it). None: none found (it raises AssertionError for tensors of several modes)."""
    return _find("torch._guards", "detect_fake_mode")(tensors)


def new_fake_mode():
    """torch._subclasses.fake_tensor.FakeTensorMode(): a fresh fake-tensor mode (the rewrites' stand-in values)."""
    return _find("torch._subclasses.fake_tensor", "FakeTensorMode")()


def custom_graph_pass() -> type | None:
    """torch._inductor.custom_graph_pass.CustomGraphPass: the base of Inductor's post-grad passes (the estimate's CPU
    rewrites). None: plain torch.compile, without the rewrites (the same numbers, slower; no int8 products)."""
    cls = _find("torch._inductor.custom_graph_pass", "CustomGraphPass")
    if cls is None:
        _missing("torch._inductor.custom_graph_pass", "compiling the estimate without vaekit's CPU rewrites")
    return cls


def functional_all_reduce() -> Callable | None:
    """torch.distributed._functional_collectives.all_reduce: a sum over the processes that Dynamo traces into a graph
    (the one-graph step with several processes). None: that step does not compile, and the split step (DDP's
    all_reduce) is taken."""
    fn = _find("torch.distributed._functional_collectives", "all_reduce")
    if fn is None:
        _missing("torch.distributed._functional_collectives", "several processes take the split compiled step")
    return fn


def aoti_compile_and_package() -> Callable | None:
    """torch._inductor.aoti_compile_and_package: AOTInductor's build of an exported program into a package (the name
    torch's documentation gives it). None: no step is built ahead of time; torch.compile compiles in the process."""
    fn = _find("torch._inductor", "aoti_compile_and_package")
    if fn is None:
        _missing("torch._inductor.aoti_compile_and_package", "compiling the step in the process instead")
    return fn


def aoti_runner(path: str):
    """The runner of an AOTInductor package: torch._C._aoti.AOTIModelPackageLoader (loads in about 2 ms and imports no
    compiler), else the public torch._inductor.aoti_load_package's (imports Inductor: about 1 s more per process)."""
    loader = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader is not None:
        # (package, model name inside it, run single-threaded, runners to keep, device index: -1 for the CPU)
        return loader(path, "model", False, 1, -1)
    _missing("torch._C._aoti.AOTIModelPackageLoader", "loading compiled steps through torch._inductor (about 1 s more)")
    from torch._inductor import aoti_load_package  # noqa: PLC0415  (imports Inductor: only without the loader above)
    return aoti_load_package(path).loader
