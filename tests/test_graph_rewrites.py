"""The CPU graph rewrites of the compiled likelihood: same values, the rewritten ops gone."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from vaekit.accel.graph_rewrites import compile_for_evaluation, rewrite_for_cpu

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


def _bf16_linear(h, w, b):
    return torch.nn.functional.linear(h.bfloat16(), w.bfloat16(), b.bfloat16())


def _int8_graph(f, *args):
    gm = make_fx(f)(*args)
    rewrite_for_cpu(gm.graph, int8=True)
    gm.recompile()
    return gm


@pytest.mark.parametrize("relu", [True, False])
def test_int8_products_stay_within_the_quantisation_bound(relu):
    """The int8 product against the float64 product of the same bf16 operands: within the worst case that the
    quantisation steps allow, sum_k (|dh_k| |w_k| + |h_k| |dw_k| + |dh_k| |dw_k|) with |dh| <= s / 2 (a row's range
    over 255 steps) and |dw| <= t / 2 (a column's largest |w| over 127), plus the bf16 rounding of the result."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 400, generator=g) * 2
    h = torch.relu(h) if relu else h
    w, b = torch.randn(784, 400, generator=g) / 20, torch.randn(784, generator=g)
    gm = _int8_graph(_bf16_linear, h, w, b)
    targets = _targets(gm)
    assert aten._int_mm.default in targets and not {aten.addmm.default, aten.mm.default} & targets
    got = gm(h, w, b)
    assert got.dtype == torch.bfloat16 and got.shape == (300, 784)
    hb, wb = h.bfloat16().double(), w.bfloat16().double().T                  # the operands the bf16 product had
    exact = hb @ wb + b.bfloat16().double()
    s = (hb.amax(1, keepdim=True) - hb.amin(1, keepdim=True)) / 255
    t = wb.abs().amax(0, keepdim=True) / 127
    bound = s / 2 * wb.abs().sum(0) + hb.abs().sum(1, keepdim=True) * t / 2 + wb.shape[0] * (s / 2) * (t / 2)
    err = (got.double() - exact).abs()
    assert (err <= bound * 1.001 + exact.abs() * 2**-8 + 1e-6).all(), (err - bound).max()
    assert err.mean() < 0.2 * bound.mean()       # and far from the worst case on average: rounding errors cancel


def test_int8_products_quantise_an_all_zero_row_to_zeros():
    h, w, b = torch.zeros(8, 128), torch.randn(16, 128), torch.randn(16)
    h[1:] = torch.relu(torch.randn(7, 128))
    got = _int8_graph(_bf16_linear, h, w, b)(h, w, b)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[0].float(), b.bfloat16().float())


@pytest.mark.parametrize("f", [
    lambda h, w, b: torch.nn.functional.linear(h, w, b),                                      # float32
    lambda h, w, b: torch.nn.functional.linear(h[:, :32].bfloat16(), w[:, :32].bfloat16()),   # inner dimension < 64
])
def test_int8_products_leave_float32_and_short_products_alone(f):
    args = (torch.randn(4, 128), torch.randn(8, 128), torch.randn(8))
    gm = make_fx(f)(*args)
    rewrite_for_cpu(gm.graph, int8=True)
    assert aten._int_mm.default not in _targets(gm)


@pytest.mark.filterwarnings("ignore")
def test_compiled_with_int8_products_is_near_the_bf16_graph():
    g = torch.Generator().manual_seed(2)
    args = (torch.relu(torch.randn(256, 400, generator=g)), torch.randn(784, 400, generator=g) / 20,
            torch.randn(784, generator=g))
    got = compile_for_evaluation(_bf16_linear, int8=True)(*args)
    torch.testing.assert_close(got.float(), _bf16_linear(*args).float(), atol=0.05, rtol=0.02)


def _variants():
    from vaekit import MODELS
    from vaekit.models.nets import ARCHITECTURES
    return [(m, arch) for m, cls in MODELS.items() if cls.stochastic for arch in ARCHITECTURES]


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("model_name", "arch"), _variants())
def test_int8_products_in_every_models_estimate_graph(model_name, arch):
    """The estimate's chunk function (encoder, decoder and densities) of every model that has one, compiled in bf16
    through AOTAutograd with the rewrite as its compiler (the graph Inductor would get, without code generation):
    with int8 products its per-image log-sum-exp stays within a nat of the bf16 graph's (64-wide layers, 8 x 8
    images, random weights), and the MLP decoders' 64-wide products do become int8."""
    import importlib

    from torch._dynamo.backends.common import aot_autograd

    from vaekit import ModelConfig, build_model
    from vaekit.models.objectives import posterior

    chunk_sums = importlib.import_module("vaekit.evaluation.evaluate")._chunk_sums
    seen = []

    def compiler(int8):
        def compile_graph(gm, example_inputs):
            rewrite_for_cpu(gm.graph, int8=int8)
            gm.recompile()
            seen.append(_targets(gm))
            return gm
        return aot_autograd(fw_compiler=compile_graph)

    torch.manual_seed(0)
    model = build_model(ModelConfig(model=model_name, arch=arch, input_shape=(1, 8, 8), latent_dim=4,
                                    hidden_dims=(64, 64) if arch == "mlp" else (8, 16), num_classes=3,
                                    **({"upper_latent_dims": (2,)} if model_name == "hvae" else {}))).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    bound = model.given(y)

    def sums(x, eps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return chunk_sums(bound, posterior(bound, x), x, eps)

    eps = torch.randn(16, 4, bound.encode(x).noise_shape[-1])
    with torch.no_grad():
        torch._dynamo.reset()
        plain = torch.compile(sums, backend=compiler(False))(x, eps)
        torch._dynamo.reset()
        int8 = torch.compile(sums, backend=compiler(True))(x, eps)
    assert aten._int_mm.default in seen[-1] or arch != "mlp"   # a conv net's products may be narrower
    for a, b in zip(int8, plain, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1.0, rtol=0.01)
