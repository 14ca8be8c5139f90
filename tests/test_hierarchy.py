"""Two stochastic layers against a model whose log p(x) is known exactly: a linear-Gaussian chain
p(z_2) = N(0, I), p(z_1|z_2) = N(A z_2 + a, S_1), p(x|z_1) = N(W z_1 + b, s^2 I) with A and S_1 diagonal and W's
columns orthogonal, so that p(z_1|x) and p(z_2|z_1) are diagonal Gaussians that the inference layers can be set to.
With the exact posterior, every importance weight is p(x): the ELBO and every estimate equal log p(x)."""

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaekit import Dataset, ModelConfig, TrainConfig, build_model
from vaekit.evaluation.evaluate import log_likelihood
from vaekit.models.objectives import LOSSES, LossContext

N_X, D, S = 5, 2, 0.4


def chain(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(N_X, D, generator=g))
    w, b = u * torch.tensor([1.5, 0.8]), torch.randn(N_X, generator=g) * 0.3
    a_mat, a_vec, s1 = torch.diag(torch.tensor([1.2, 0.6])), torch.tensor([0.3, -0.2]), torch.tensor([0.5, 0.8])
    cov1 = a_mat @ a_mat.T + torch.diag(s1)                       # p(z_1) = N(a, A A^T + S_1), diagonal
    p1 = torch.linalg.inv(cov1) + w.T @ w / S**2                  # precision of p(z_1|x), diagonal
    m_x = torch.linalg.inv(p1) @ w.T / S**2                      # mean of p(z_1|x) = m_x x + c
    c = torch.linalg.inv(p1) @ (torch.linalg.inv(cov1) @ a_vec - w.T @ b / S**2)
    p2 = torch.eye(D) + a_mat.T @ torch.diag(1 / s1) @ a_mat      # precision of p(z_2|z_1), diagonal
    m_z = torch.linalg.inv(p2) @ a_mat.T @ torch.diag(1 / s1)    # mean of p(z_2|z_1) = m_z (z_1 - a)
    model = build_model(ModelConfig(model="hvae", input_shape=(N_X,), latent_dim=D, hidden_dims=(), upper_latent_dims=(D,),
                                    upper_hidden_dims=(), likelihood="gaussian", obs_std=S))
    enc, up, down, dec = model.encoder[0], model.up[0].net[0], model.latent_prior.down[0].net[0], model.decoder[0]
    with torch.no_grad():
        for layer, weight, bias, logvar in ((enc, m_x, c, -torch.log(torch.diagonal(p1))),
                                            (up, m_z, -m_z @ a_vec, -torch.log(torch.diagonal(p2))),
                                            (down, a_mat, a_vec, torch.log(s1))):
            layer.weight.zero_()
            layer.weight[:D] = weight
            layer.bias[:D], layer.bias[D:] = bias, logvar
        dec.weight.copy_(w)
        dec.bias.copy_(b)
    marginal = MultivariateNormal(w @ a_vec + b, w @ cov1 @ w.T + S**2 * torch.eye(N_X))
    x = marginal.sample((300,))
    return model.eval(), Dataset(x), marginal.log_prob(x)


@pytest.mark.parametrize("compile", [False, True])
def test_with_the_exact_posterior_the_estimate_is_log_p_x(compile):
    model, ds, exact = chain()
    r = log_likelihood(model, ds, k=4, compile=compile)
    torch.testing.assert_close(-r["per_example_nll"].float(), exact, atol=3e-4, rtol=1e-5)


@pytest.mark.parametrize("loss", ["elbo", "iwae"])
def test_with_the_exact_posterior_the_bounds_are_tight(loss):
    model, ds, exact = chain()
    terms = LOSSES[loss](model, ds.x, LossContext(TrainConfig(loss=loss, mc_samples=3)))
    torch.testing.assert_close(-terms["loss"], exact, atol=3e-4, rtol=1e-5)


def test_a_wrong_posterior_gives_a_bound_below_log_p_x():
    model, ds, exact = chain()
    with torch.no_grad():
        model.up[0].net[0].bias[:D] += 0.7                        # q(z_2|z_1) off its mark
    terms = LOSSES["elbo"](model, ds.x, LossContext(TrainConfig(mc_samples=2000)))
    gap = (-terms["loss"] - exact).mean()
    assert gap < -0.05                                             # the ELBO is a lower bound
    r = log_likelihood(model, ds, k=2000, compile=False)
    assert abs((-r["per_example_nll"].float() - exact).mean()) < 0.01   # importance sampling recovers log p(x)


def test_the_prior_samples_the_chain_and_figures_see_the_top_layer():
    model, _, _ = chain()
    torch.manual_seed(0)
    z = model.prior().sample(100_000)                              # [z_1, z_2]
    a_mat, a_vec, s1 = torch.diag(torch.tensor([1.2, 0.6])), torch.tensor([0.3, -0.2]), torch.tensor([0.5, 0.8])
    torch.testing.assert_close(z[:, :D].mean(0), a_vec, atol=0.02, rtol=0)
    torch.testing.assert_close(z[:, :D].var(0), torch.diagonal(a_mat @ a_mat.T) + s1, atol=0.03, rtol=0.02)
    torch.testing.assert_close(z[:, D:].var(0), torch.ones(D), atol=0.03, rtol=0.02)
    assert model.shown_latent_dim == D and model.shown(z).shape == (100_000, D)
    top = torch.zeros(1, D)                                        # a top-layer code decodes through the mean of z_1
    torch.testing.assert_close(model.decode(top).mean, model.decode(torch.cat([a_vec[None], top], -1)).mean)
