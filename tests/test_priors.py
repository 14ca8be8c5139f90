"""The prior registry and the loss context: a new prior, or a loss that needs the dataset size, is one class or
function plus one registry line; every KL goes through model.prior() (closed form, else Monte Carlo)."""

import json
import math

import pytest
import torch
from torch import nn

from conftest import synthetic_splits
from vaekit import PRIORS, ConfigError, DataConfig, DiagonalGaussian, ModelConfig, RunConfig, TrainConfig, build_model, fit, plots
from vaekit.evaluation.evaluate import log_likelihood
from vaekit.models.objectives import LOSSES, LossContext, elbo, reads

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


# ---- the learned priors: mixture of Gaussians and VampPrior

D = dist = torch.distributions


def _torch_mixture(mu, logvar, log_w):
    return D.MixtureSameFamily(D.Categorical(logits=log_w), D.Independent(D.Normal(mu, torch.exp(0.5 * logvar)), 1))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_mixture_density_is_torch_distributions_mixture_same_family(precision):
    from vaekit.models.distributions import mixture_log_prob

    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(7, 3, generator=g) * 2, torch.randn(7, 3, generator=g)
    log_w = torch.randn(7, generator=g).log_softmax(0)
    z = torch.randn(4, 5, 3, generator=g) * 3                 # (samples, batch, D), far tails included
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        got = mixture_log_prob(z, mu, logvar, log_w)
    assert got.dtype == torch.float32 and got.shape == (4, 5)
    torch.testing.assert_close(got, _torch_mixture(mu, logvar, log_w).log_prob(z), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_a_learned_prior_is_the_mixture_it_says_and_samples_from_it(prior):
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=SHAPE, latent_dim=2, hidden_dims=(8,), prior=prior, prior_components=4))
    p = model.prior()
    if prior == "vamp":   # the components are the posterior at the pseudo-inputs, through the model's own encoder
        q = model.encode(p.pseudo_inputs.clamp(0, 1))
        mu, logvar, log_w = q.mu, q.logvar, torch.full((4,), -math.log(4))
        assert p.name == "VampPrior, 4 pseudo-inputs" and set(p.state_dict()) == {"pseudo_inputs"}
    else:
        mu, logvar, log_w = p.mu, p.logvar, p.logits.log_softmax(0)
        assert p.name == "a mixture of 4 Gaussians"
    mixture = _torch_mixture(mu.detach(), logvar.detach(), log_w.detach())
    z = torch.randn(6, 2) * 2
    torch.testing.assert_close(p.log_prob(z), mixture.log_prob(z), atol=1e-5, rtol=1e-5)
    draws = p.sample(40_000)
    assert draws.shape == (40_000, 2) and p.kl(model.encode(torch.rand(3, *SHAPE))) is None
    torch.testing.assert_close(draws.mean(0), mixture.mean, atol=0.05, rtol=0.05)
    torch.testing.assert_close(draws.var(0), mixture.variance, atol=0.1, rtol=0.1)


def test_the_monte_carlo_kl_with_a_mixture_prior_matches_torch_distributions():
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=SHAPE, latent_dim=2, hidden_dims=(8,), prior="mog", prior_components=3))
    x = torch.rand(3, *SHAPE)
    terms = elbo(model, x, LossContext(TrainConfig(mc_samples=50_000)))
    q, p = model.encode(x), model.prior()
    mixture = _torch_mixture(p.mu.detach(), p.logvar.detach(), p.logits.detach().log_softmax(0))
    qd = D.Independent(D.Normal(q.mu.detach(), q.std.detach()), 1)
    z = qd.sample((50_000,))
    independent = (qd.log_prob(z) - mixture.log_prob(z)).mean(0)      # KL(q || p) by torch.distributions' densities
    torch.testing.assert_close(terms["kl"].detach(), independent, atol=0.03, rtol=0.02)


def test_learned_priors_are_refused_where_nothing_would_learn_them():
    with pytest.raises(ConfigError, match="learned through the KL term"):
        build_model(ModelConfig(model="ae", input_shape=SHAPE, latent_dim=2, hidden_dims=(8,), prior="mog"))
    with pytest.raises(ConfigError, match="use --prior mog"):
        build_model(ModelConfig(model="cvae", input_shape=SHAPE, latent_dim=2, hidden_dims=(8,), prior="vamp",
                                num_classes=3))


def test_priors_and_posteriors_from_the_command_line(tmp_path, capsys):
    from vaekit.cli.main import main

    run = tmp_path / "vamp-iaf"
    assert main(["train", "--data", "digits", "--prior", "vamp", "--prior-components", "20", "--posterior", "iaf",
                 "--flow-steps", "1", "--latent-dim", "2", "--hidden", "16", "--epochs", "1", "--val-size", "100",
                 "--run-dir", str(run), "--no-report", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())["model"]
    assert (config["prior"], config["prior_components"], config["posterior"], config["flow_steps"]) == ("vamp", 20, "iaf", 1)
    capsys.readouterr()
    assert main(["eval", str(run), "--nll-k", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["likelihood"]["k"] == 4
    for flags, message in ((["--flow-steps", "3"], "--flow-steps 3 (ModelConfig.flow_steps) does nothing here"),
                           (["--prior-components", "5"], "applies to prior mog or prior vamp"),
                           (["--posterior", "nf"], "posterior 'nf' is unknown"),
                           (["--prior", "vamp", "--model", "cvae"], "use --prior mog"),
                           (["--prior-components", "0", "--prior", "mog"], "prior_components=0 is impossible")):
        assert main(["train", "--data", "digits", *flags, "--epochs", "1", "--run-dir", str(tmp_path / "bad"),
                     "--no-report", "--no-progress"]) != 0
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "bad" / "checkpoint").exists()
