"""The prior registry and the loss context: a new prior, or a loss that needs the dataset size, is one class or
function plus one registry line; every KL goes through model.prior() (closed form, else Monte Carlo)."""

import math

import pytest
import torch
from torch import nn

from conftest import synthetic_splits
from vaekit import PRIORS, ConfigError, DataConfig, DiagonalGaussian, ModelConfig, RunConfig, TrainConfig, build_model, fit, plots
from vaekit.evaluate import log_likelihood
from vaekit.objectives import LOSSES, LossContext, elbo, reads

SHAPE = (1, 6, 6)


class WideNormal(nn.Module):
    """N(0, 4 I), declared without a closed-form KL, so that the losses estimate it by Monte Carlo."""

    name = "N(0, 4I)"
    closed_form_kl = False
    unit_sd = 2.0

    def __init__(self, config):
        super().__init__()
        self.latent_dim = config.latent_dim

    def log_prob(self, z):
        return torch.distributions.Normal(0.0, 2.0).log_prob(z.float()).sum(-1)

    def sample(self, n, temperature=1.0):
        return 2.0 * temperature * torch.randn(n, self.latent_dim)

    def kl(self, q):
        return None

    def kl_per_dim(self, q):
        return None


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setitem(PRIORS, "wide", WideNormal)      # the one registry line
    return "wide"


def test_the_standard_prior_kl_is_the_closed_form_against_torch_distributions():
    model = build_model(ModelConfig(input_shape=SHAPE, latent_dim=3, hidden_dims=(8,)))
    q = DiagonalGaussian(torch.randn(5, 3), torch.randn(5, 3))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(q.mu, q.std), torch.distributions.Normal(0, 1)).sum(-1)
    torch.testing.assert_close(model.prior().kl(q), expected)
    assert model.prior().name == "N(0, I)" and model.prior().sample(4).shape == (4, 3)
    assert not list(model.prior().state_dict())   # nothing new in the checkpoint: old runs still load


def test_a_new_prior_trains_with_a_monte_carlo_kl_and_is_refused_with_analytic(tmp_path, wide):
    model = build_model(ModelConfig(input_shape=SHAPE, latent_dim=2, hidden_dims=(8,), prior=wide))
    x = synthetic_splits(SHAPE).train.x[:4]
    torch.manual_seed(0)
    terms = elbo(model, x, LossContext(TrainConfig(mc_samples=20_000)))
    q = model.encode(x)
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(q.mu, q.std), torch.distributions.Normal(0, 2)).sum(-1)
    torch.testing.assert_close(terms["kl"], exact, atol=0.05, rtol=0.02)       # Monte Carlo, L = 20,000
    with pytest.raises(ConfigError, match="no closed-form KL"):
        elbo(model, x, LossContext(TrainConfig(kl="analytic")))
    data = synthetic_splits(SHAPE)
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,), prior=wide), DataConfig("digits"), TrainConfig(epochs=2))
    result = fit(config, tmp_path / "run", data=data, progress=False, log=lambda s: None)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    ll = log_likelihood(result.model, data.test, k=20)
    assert math.isfinite(ll["nll"]) and ll["nll"] <= ll["neg_elbo"] + 1.0    # the estimate uses the new prior unchanged
    with pytest.raises(ConfigError, match="has no closed-form KL"):
        fit(RunConfig(config.model, config.data, TrainConfig(kl="analytic")), tmp_path / "r2", data=data,
            progress=False, log=lambda s: None)
    run = plots.Run(tmp_path / "run")
    run.__dict__["test"] = data.test      # the synthetic data, not the digits the config names
    fig, _ = plots.figure("samples", [run], plots.PlotOptions(n_samples=4))
    assert "z ~ N(0, 4I)" in fig.get_suptitle()          # captions read the prior's name


def test_a_loss_that_needs_the_dataset_size_is_a_function_and_a_registry_line(tmp_path, monkeypatch):
    seen = []

    @reads("beta")
    def scaled(model, x, ctx):
        """-ELBO with the KL shared out over the N training examples (as minibatch-weighted estimators do)."""
        seen.append(ctx.dataset_size)
        terms = elbo(model, x, ctx)
        return {**terms, "loss": terms["recon"] + ctx.train.beta * terms["kl"] * len(x) / ctx.dataset_size}

    monkeypatch.setitem(LOSSES, "scaled", scaled)      # the one registry line
    data = synthetic_splits(SHAPE)
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,)), DataConfig("digits"),
                       TrainConfig(loss="scaled", epochs=1, batch_size=16))
    fit(config, tmp_path / "run", data=data, progress=False, log=lambda s: None)
    assert seen and set(seen) == {len(data.train)}    # training and validation both see N
