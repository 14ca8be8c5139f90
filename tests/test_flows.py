"""The inverse autoregressive flow posterior: its log-determinant against autograd's Jacobian, the autoregressive
structure, and log q(z|x) as a normalised density (a change of variables checked independently)."""

import pytest
import torch

from vaekit import ConfigError, DiagonalGaussian, ModelConfig, build_model
from vaekit.models.flows import FlowPosterior, IAFStep, InverseAutoregressiveFlow, made_masks


def _scrambled(module):
    """Random weights: a freshly made step is near z -> 0.88 z, too close to the identity to test much."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return module


@pytest.mark.parametrize("dim", [1, 2, 4])
def test_an_iaf_step_is_autoregressive_and_its_log_det_is_autograds(dim):
    step = _scrambled(IAFStep(dim, hidden=6, context=3)).double()
    h = torch.randn(3, dtype=torch.float64)
    z = torch.randn(dim, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: step(v, h)[0], z)
    assert torch.count_nonzero(jac.triu(1)) == 0          # output i depends on inputs <= i only
    _, log_det = step(z, h)
    torch.testing.assert_close(log_det, torch.linalg.slogdet(jac).logabsdet)


def test_made_masks_give_each_output_only_earlier_inputs():
    to_hidden, to_out = made_masks(4, 10)
    reach = (to_out.float() @ to_hidden.float()) > 0       # (2D outputs, D inputs): some path from input to output
    for i in range(4):
        for out in (i, 4 + i):                                # m_i and s_i
            assert reach[out, i:].sum() == 0 and (i == 0 or reach[out, :i].all())


def test_the_flow_log_q_is_the_change_of_variables_of_the_whole_flow():
    flow = _scrambled(InverseAutoregressiveFlow(3, steps=3, hidden=8, context=2))
    base = DiagonalGaussian(torch.randn(1, 3), torch.randn(1, 3) * 0.3)
    q = FlowPosterior(base, flow, torch.randn(1, 2))
    eps = torch.randn(5, 1, 3)
    z, log_q = q.reparameterise_with_log_prob(eps)
    for i in range(5):
        z0 = base.reparameterise(eps[i])
        jac = torch.autograd.functional.jacobian(lambda v: flow(v, q.context)[0], z0)[0, :, 0]   # (3, 3)
        expected = base.log_prob(z0) - torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(log_q[i], expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(z[0], flow(base.reparameterise(eps[0]), q.context)[0])


def test_the_flow_density_integrates_to_one():
    """In 1-D, the change-of-variables density over a fine grid of z sums to 1 (an independent check of log q)."""
    torch.manual_seed(0)
    flow = _scrambled(InverseAutoregressiveFlow(1, steps=2, hidden=4, context=1)).double()
    base = DiagonalGaussian(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    h = torch.randn(1, 1, dtype=torch.float64)
    eps = torch.linspace(-9, 9, 20_001, dtype=torch.float64)[:, None, None]
    z, log_q = FlowPosterior(base, flow, h).reparameterise_with_log_prob(eps)
    z, q = z[:, 0, 0].double(), log_q[:, 0].double().exp()
    assert torch.all(z[1:] > z[:-1])                          # a 1-D flow is monotone
    mass = torch.trapezoid(q, z)
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


def test_a_vae_with_an_iaf_posterior_samples_with_log_q_and_refuses_density_queries():
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=(1, 4, 4), latent_dim=3, hidden_dims=(8,), posterior="iaf", flow_steps=2,
                                    flow_hidden=16))
    assert model.encoder[-1].out_features == 9                # mu, logvar and a context per latent dimension
    q = model.encode(torch.rand(2, 1, 4, 4))
    z, log_q = q.rsample_with_log_prob(7)
    assert z.shape == (7, 2, 3) and log_q.shape == (7, 2) and torch.isfinite(log_q).all()
    assert q.mode.shape == (2, 3) and model.prior().kl(q) is None     # no closed form: the losses use Monte Carlo
    with pytest.raises(ConfigError, match="own samples only"):
        q.log_prob(z)
