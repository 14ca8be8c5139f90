"""Rewrites of a compiled evaluation graph for CPUs: a torch.compile post-grad pass.

Inductor compiles the k = 5,000 likelihood estimate into matrix products and fused pointwise
kernels; on a CPU two of its choices cost a fifth of the time. Measured on this project's 2-core
Xeon, one 2,500-row chunk of the IWAE-paper decoder (50-200-200-784, tanh) with log p(x|z),
log p(z) and log q(z|x): 5.4 ms as Inductor builds it, 4.2 ms with both rewrites
(`benchmarks/compiled_chunk.py`, median of 7 x 100 calls); the first rewrite alone, timed
separately the same way, 5.0 ms.

- addmm(b, h, W) -> mm(h, W) + b. CPU addmm copies the broadcast bias into its output before
  the GEMM; as a separate add the bias fuses into the pointwise kernel that reads the product
  anyway (the activation, or log p(x|z)). Inductor makes this rewrite itself on GPUs only.
- tanh(h) -> e / (e + 2), e = expm1(2 clamp(h, -10, 10)). The same function (no cancellation:
  e >= -1, so e + 2 >= 1; tanh rounds to +-1 in float32 beyond |h| = 9.1), but Inductor's
  vectorised expm1 is 3x faster than its tanh (0.17 vs 0.49 ms on 500,000 floats).

Only float32 nodes on CPU tensors are rewritten; the pass changes no value beyond float32 rounding.

With int8 (log_likelihood's precision int8, which auto picks where this CPU's int8 products are measured
faster), a third rewrite, int8_products: bf16 products as int8 products with float32 scales. On this project's
2-core AMD EPYC (AVX512-VNNI) torch._int_mm runs a 2500 x 400 x 784 product at 1,790 Gop/s against 828 bf16
GFLOP/s; one 2,500-row chunk of the mnist-fast decoder (20-400-784) took 1.96 ms compiled with int8 products
(the int8 product 0.90 ms, the quantisation 0.18 ms) against 2.39 ms in bf16 (torch.profiler, 100 calls each).
It moves values by the quantisation steps (a test bounds it); the estimate by +0.01 to +0.02 nats.
"""

from __future__ import annotations

import functools

import torch

from ..runtime import compiler_ready
from ..torch_private import custom_graph_pass, detect_fake_mode, new_fake_mode

aten, prims = torch.ops.aten, torch.ops.prims
INT8_MIN_INNER = 64   # int8 products only where the inner dimension is at least this: smaller ones cost little
MIN_SCALE = 1e-30     # an all-zero row (ReLU) quantises to zeros, not NaN
TANH_CLAMP = 10.0   # tanh(10) = 1 - 4e-9: 1.0 in float32, and expm1(20) is far from overflow


def _cpu(node, dtype: torch.dtype) -> bool:
    """Whether `node` computes a CPU tensor of `dtype`."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.device.type == "cpu" and val.dtype == dtype


def _op(graph, before, target, *args):
    """A node computing target(*args), placed before `before`, with its value's metadata (shape, dtype) found by
    running target on the arguments' fake tensors."""
    vals = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
    with graph.inserting_before(before):
        new = graph.call_function(target, args)
    try:
        mode = detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
    except AssertionError:   # values of several fake modes (a graph traced by make_fx): a fresh one, same shapes
        mode = None
    if mode is None:
        mode = new_fake_mode()
        with mode:
            vals = [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device)
                    if isinstance(v, torch.Tensor) else v for v in vals]
    with mode:
        new.meta["val"] = target(*vals)
    return new


def unfuse_bias(graph: torch.fx.Graph) -> None:
    """addmm(b, h, W) -> mm(h, W) + b on CPU float32 tensors (alpha = beta = 1). Not in bf16, where the
    product would be rounded to bf16 before the bias is added."""
    for node in list(graph.find_nodes(op="call_function", target=aten.addmm.default)):
        if not _cpu(node, torch.float32) or node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("beta", 1) != 1:
            continue
        bias, h, w = node.args[:3]
        op = functools.partial(_op, graph, node)
        out = op(aten.add.Tensor, op(aten.mm.default, h, w), bias)
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def tanh_by_expm1(graph: torch.fx.Graph) -> None:
    """tanh(h) -> e / (e + 2), e = expm1(2 clamp(h, -10, 10)) on CPU float32 tensors."""
    for node in list(graph.find_nodes(op="call_function", target=aten.tanh.default)):
        if not _cpu(node, torch.float32):
            continue
        op = functools.partial(_op, graph, node)
        clamped = op(aten.clamp_max.default, op(aten.clamp_min.default, node.args[0], -TANH_CLAMP), TANH_CLAMP)
        e = op(aten.expm1.default, op(aten.mul.Tensor, clamped, 2.0))
        out = op(aten.div.Tensor, e, op(aten.add.Tensor, e, 2.0))
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def _f32(op, t):
    return op(prims.convert_element_type.default, t, torch.float32)


def _int8(op, t):
    return op(prims.convert_element_type.default, op(aten.round.default, t), torch.int8)


def _scale(op, span, levels: float):
    """span / levels, kept away from 0 (an all-zero slice quantises to zeros, not NaN)."""
    return op(aten.clamp_min.default, op(aten.div.Tensor, span, levels), MIN_SCALE)


def int8_products(graph: torch.fx.Graph) -> None:
    """mm(h, W) and addmm(b, h, W) in bf16 on CPU tensors with at least INT8_MIN_INNER inner terms -> int8
    products (torch._int_mm, int32 sums), scaled back in float32, the bias added, rounded to bf16 as the bf16
    product was.

    Each row of h is quantised over its own range [lo, hi] with 256 levels: h ~= lo + s (q + 128), s = (hi - lo)
    / 255, q in [-128, 127] (ReLU outputs, never negative, keep all 8 bits; a symmetric code would waste one).
    Each column of W symmetrically: W ~= t c, t = max |W| / 127. Then
        h W ~= s t (q c + 128 sum_k c) + lo t sum_k c,
    the int8 product plus two rank-1 corrections."""
    for node in list(graph.find_nodes(op="call_function", target=aten.addmm.default)) + \
            list(graph.find_nodes(op="call_function", target=aten.mm.default)):
        addmm = node.target is aten.addmm.default
        bias, h, w = node.args[:3] if addmm else (None, *node.args[:2])
        if addmm and (node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("beta", 1) != 1):
            continue
        if not all(_cpu(n, torch.bfloat16) for n in (node, h, w)) or h.meta["val"].shape[1] < INT8_MIN_INNER:
            continue
        op = functools.partial(_op, graph, node)
        h32, w32 = _f32(op, h), _f32(op, w)
        lo, hi = op(aten.amin.default, h32, [1], True), op(aten.amax.default, h32, [1], True)   # (M, 1)
        s = _scale(op, op(aten.sub.Tensor, hi, lo), 255.0)
        # times 1 / scale, not divided by it: one division per row or column instead of one per element
        q = _int8(op, op(aten.sub.Tensor, op(aten.mul.Tensor, op(aten.sub.Tensor, h32, lo), op(aten.reciprocal.default, s)),
                         128.0))
        t = _scale(op, op(aten.amax.default, op(aten.abs.default, w32), [0], True), 127.0)   # (1, N)
        c = _int8(op, op(aten.mul.Tensor, w32, op(aten.reciprocal.default, t)))
        c_sum = op(aten.mul.Tensor, op(aten.sum.dim_IntList, _f32(op, c), [0], True), t)   # t sum_k c, (1, N)
        out = op(aten.mul.Tensor, op(aten.mul.Tensor, _f32(op, op(aten._int_mm.default, q, c)), s), t)
        out = op(aten.add.Tensor, out, op(aten.mul.Tensor, op(aten.add.Tensor, op(aten.mul.Tensor, s, 128.0), lo), c_sum))
        if addmm:
            out = op(aten.add.Tensor, out, _f32(op, bias))
        out = op(prims.convert_element_type.default, out, torch.bfloat16)
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def rewrite_for_cpu(graph: torch.fx.Graph, int8: bool = False) -> None:
    if int8:
        int8_products(graph)
    unfuse_bias(graph)
    tanh_by_expm1(graph)


def compile_for_evaluation(fn, int8: bool = False):
    """torch.compile(fn) with the CPU rewrites as Inductor's post-grad pass (plain torch.compile
    where this torch has no custom-pass hook)."""
    compiler_ready()
    CustomGraphPass = custom_graph_pass()  # noqa: N806  (a class)
    if CustomGraphPass is None:
        return torch.compile(fn)

    class CpuRewrites(CustomGraphPass):
        def __call__(self, graph):
            rewrite_for_cpu(graph, int8)

        def uuid(self):   # part of Inductor's cache key: change it when the rewrites change
            return f"vaekit.accel.graph_rewrites/unfuse_bias+tanh_by_expm1{'+int8_products' if int8 else ''}/4"

    return torch.compile(fn, options={"post_grad_custom_post_pass": CpuRewrites()})
