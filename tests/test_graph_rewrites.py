"""The CPU graph rewrites of the compiled likelihood: same values, the rewritten ops gone."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from vaekit.graph_rewrites import compile_for_evaluation, rewrite_for_cpu

aten = torch.ops.aten


def _mlp(h, w1, b1, w2, b2):
    return torch.tanh(torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(h, w1, b1)), w2, b2))


def _targets(gm):
    return {n.target for n in gm.graph.nodes if n.op == "call_function"}


def test_rewritten_graph_has_no_addmm_or_tanh_and_the_same_values():
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(64, 50, generator=g) * 3, torch.randn(200, 50, generator=g), torch.randn(200, generator=g),
            torch.randn(30, 200, generator=g) / 10, torch.randn(30, generator=g))
    gm = make_fx(_mlp)(*args)
    assert {aten.addmm.default, aten.tanh.default} <= _targets(gm)
    rewrite_for_cpu(gm.graph)
    gm.recompile()
    assert not {aten.addmm.default, aten.tanh.default} & _targets(gm)
    torch.testing.assert_close(gm(*args), _mlp(*args), atol=2e-6, rtol=1e-5)


def test_tanh_by_expm1_is_tanh_everywhere_including_the_tails():
    h = torch.cat([torch.linspace(-40, 40, 20001), torch.tensor([0.0, 1e-30, -1e-7, 9.0, 9.2, -9.2, 88.0, -100.0])])
    gm = make_fx(torch.tanh)(h)
    rewrite_for_cpu(gm.graph)
    gm.recompile()
    assert aten.expm1.default in _targets(gm)
    got, exact = gm(h).double(), torch.tanh(h.double())
    assert ((got - exact).abs() <= 4 * torch.finfo(torch.float32).eps * exact.abs().clamp(min=torch.finfo(torch.float32).tiny)).all()


@pytest.mark.parametrize("f", [
    lambda b, h, w: torch.addmm(b, h, w, beta=0.5),                                              # scaled
    lambda b, h, w: torch.tanh(torch.addmm(b.bfloat16(), h.bfloat16(), w.bfloat16())),           # bf16
    lambda b, h, w: torch.tanh(torch.addmm(b.double(), h.double(), w.double())),                 # float64
])
def test_scaled_and_non_float32_ops_are_left_alone(f):
    gm = make_fx(f)(torch.randn(4), torch.randn(3, 5), torch.randn(5, 4))
    before = [n.target for n in gm.graph.nodes]
    rewrite_for_cpu(gm.graph)
    assert [n.target for n in gm.graph.nodes] == before


@pytest.mark.filterwarnings("ignore")
def test_compiled_with_rewrites_matches_eager():
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(300, 50, generator=g), torch.randn(200, 50, generator=g) / 7, torch.randn(200, generator=g),
            torch.randn(784, 200, generator=g) / 14, torch.randn(784, generator=g))
    torch.testing.assert_close(compile_for_evaluation(_mlp)(*args), _mlp(*args), atol=2e-6, rtol=1e-5)
