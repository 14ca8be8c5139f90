"""The importance-sampled log-likelihood against a model whose log p(x) is known exactly:
a linear-Gaussian VAE (probabilistic PCA), p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I), so
p(x) = N(b, W W^T + s^2 I). W has orthogonal columns, which makes the true posterior
N(M^-1 W^T (x - b), s^2 M^-1), M = W^T W + s^2 I, diagonal: our encoder can represent it."""

import dataclasses
import importlib
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaekit import Dataset, ModelConfig, TrainConfig, build_model, runtime
from vaekit.errors import ConfigError
from vaekit.evaluation.evaluate import active_units, log_likelihood
from vaekit.models.objectives import LOSSES, LossContext

N_X, N_Z, S = 6, 2, 0.5


def ppca(perturb: float = 0.0, seed: int = 0):
    """(model with the exact posterior as encoder, plus `perturb` noise on it; data; exact log p(x))."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(N_X, N_Z, generator=g))
    w, b = u * torch.tensor([2.0, 1.0]), torch.randn(N_X, generator=g) * 0.3     # orthogonal columns
    m_diag = (w**2).sum(0) + S**2                                                 # M = W^T W + s^2 I, diagonal
    model = build_model(ModelConfig(input_shape=(N_X,), latent_dim=N_Z, hidden_dims=(), likelihood="gaussian", obs_std=S))
    enc, dec = model.encoder[0], model.decoder[0]
    with torch.no_grad():
        a = w.T / m_diag[:, None]                                                 # posterior mean M^-1 W^T (x - b)
        enc.weight.zero_()
        enc.bias.zero_()
        enc.weight[:N_Z] = a + perturb * torch.randn(a.shape, generator=g)
        enc.bias[:N_Z] = -a @ b
        enc.bias[N_Z:] = torch.log(S**2 / m_diag) + perturb * torch.randn(N_Z, generator=g)
        dec.weight.copy_(w)
        dec.bias.copy_(b)
    marginal = MultivariateNormal(b, w @ w.T + S**2 * torch.eye(N_X))
    x = b + torch.randn(400, N_X, generator=g) @ torch.linalg.cholesky(w @ w.T + S**2 * torch.eye(N_X)).T
    return model.eval(), Dataset(x), marginal.log_prob(x)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_with_the_true_posterior_as_proposal_every_k_is_exact(k):
    model, ds, exact = ppca()
    r = log_likelihood(model, ds, k=k, compile=False)
    torch.testing.assert_close(-r["per_example_nll"].float(), exact, atol=2e-4, rtol=1e-5)


def test_the_estimate_converges_to_the_exact_value_as_k_grows():
    model, ds, exact = ppca(perturb=0.1)
    errors = []
    for k in (1, 10, 100, 3000):
        gap = -log_likelihood(model, ds, k=k, compile=False)["per_example_nll"].float() - exact   # (N,)
        errors.append(abs(gap.mean().item()))
    se = gap.std().item() / math.sqrt(len(gap))      # standard error of the final estimate's mean
    assert errors[-1] < 3 * se + 1e-3                  # converged, within its standard error
    assert errors == sorted(errors, reverse=True) and errors[0] > 20 * errors[-1]


def test_the_estimate_bounds_the_elbo_and_grows_with_k_on_average():
    model, ds, exact = ppca(perturb=0.2, seed=1)
    nll = [log_likelihood(model, ds, k=k, compile=False)["nll"] for k in (1, 5, 25, 125)]
    r = log_likelihood(model, ds, k=125, compile=False)
    assert all(b <= a + 1e-3 for a, b in zip(nll, nll[1:]))            # -log p(x) estimate non-increasing in k
    assert r["nll"] <= r["neg_elbo"] and r["nll"] >= -exact.mean().item() - 0.05
    assert r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"])


def test_the_result_does_not_depend_on_the_chunk_size():
    model, ds, exact = ppca(perturb=0.2, seed=2)
    small = log_likelihood(model, ds, k=600, chunk_size=7, compile=False)
    whole = log_likelihood(model, ds, k=600, chunk_size=600, batch_size=13, compile=False)
    # independent draws: the difference of two estimates is within their joint noise
    diff = (small["per_example_nll"] - whole["per_example_nll"])
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(len(diff)) + 1e-3


@pytest.mark.slow
@pytest.mark.compile
def test_compiled_and_eager_paths_agree():
    model, ds, exact = ppca()
    compiled = log_likelihood(model, ds, k=20, compile=True)
    torch.testing.assert_close(-compiled["per_example_nll"].float(), exact, atol=2e-4, rtol=1e-5)


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    mu = torch.stack([torch.randn(500), torch.randn(500) * 0.05, torch.zeros(500)], dim=1)
    assert active_units(mu) == 1
    assert active_units(torch.randn(500, 4)) == 4


def test_iwae_loss_with_one_sample_is_the_monte_carlo_elbo_and_tightens_with_k():
    model, ds, _ = ppca(perturb=0.5)
    x = ds.x
    torch.manual_seed(0)
    iwae1 = LOSSES["iwae"](model, x, LossContext(TrainConfig(loss="iwae", mc_samples=1)))
    torch.manual_seed(0)
    elbo_mc = LOSSES["elbo"](model, x, LossContext(TrainConfig(kl="mc", mc_samples=1)))
    torch.testing.assert_close(iwae1["loss"], elbo_mc["loss"], atol=1e-4, rtol=1e-5)
    iwae50 = LOSSES["iwae"](model, x, LossContext(TrainConfig(loss="iwae", mc_samples=50)))["loss"].mean()
    assert iwae50 < LOSSES["elbo"](model, x, LossContext(TrainConfig()))["loss"].mean()


def test_impossible_k_is_a_clear_error():
    from vaekit.errors import ConfigError

    model, ds, _ = ppca()
    with pytest.raises(ConfigError, match="k=0 is impossible"):
        log_likelihood(model, ds, k=0)


def test_the_compiled_estimate_follows_changed_weights():
    model, ds, exact = ppca()
    first = log_likelihood(model, ds, k=5, compile=True)["nll"]
    with torch.no_grad():
        model.decoder[0].bias.add_(1.0)      # the model moves on (e.g. more training)
    torch.manual_seed(0)
    compiled = log_likelihood(model, ds, k=5, compile=True)["nll"]
    torch.manual_seed(0)
    eager = log_likelihood(model, ds, k=5, compile=False)["nll"]
    # compiled code draws its own random numbers: equal up to Monte Carlo noise, far from the old value
    assert compiled == pytest.approx(eager, abs=0.3) and compiled > first + 5


@pytest.fixture(scope="module")
def digits_vae(tmp_path_factory):
    """A small VAE trained in fp32 on scikit-learn's digits, and their test split."""
    from vaekit import DataConfig, RunConfig, fit, load_data

    data = load_data(DataConfig("digits", val_size=100, pixels="dynamic"))
    cfg = RunConfig(ModelConfig(latent_dim=4, hidden_dims=(64,)), DataConfig("digits", val_size=100, pixels="dynamic"),
                    TrainConfig(epochs=5, batch_size=64, lr=3e-3, precision="fp32"))
    return fit(cfg, tmp_path_factory.mktemp("run"), data=data, progress=False, log=lambda s: None).model, data.test


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_moves_the_reported_likelihood_by_less_than_its_noise(digits_vae, precision):
    """The estimate in bf16 or with int8 decoder products (what --nll-precision auto picks on CPUs where they are
    faster) against fp32 on the same samples: the difference is far below the estimate's own standard error over
    the images. int8 is a rewrite of the compiled graph, so both are compiled there."""
    model, test = digits_vae
    compile = precision == "int8"
    results = {}
    for p in ("fp32", precision):
        torch.manual_seed(0)
        results[p] = log_likelihood(model, test, k=200, precision=p, compile=compile)
        assert results[p]["precision"] == p
    diff = abs(results[precision]["nll"] - results["fp32"]["nll"])
    assert diff < 0.1 * results["fp32"]["nll_se"], (diff, results["fp32"]["nll_se"])
    print(f"{precision} - fp32: {diff:.4f} nats, standard error {results['fp32']['nll_se']:.3f}")


@pytest.mark.parametrize("int8_faster", [True, False])
@pytest.mark.parametrize("compiled", [True, False])
def test_auto_never_picks_int8(monkeypatch, int8_faster, compiled):
    """int8 products move -log p(x) by about 0.02 nats: opt-in only, wherever they would be faster."""
    module = importlib.import_module("vaekit.evaluation.evaluate")
    monkeypatch.setattr(runtime, "cpu_int8_is_faster", lambda: int8_faster)
    monkeypatch.setattr(module, "resolve_precision", lambda p, device: "fp32" if p == "auto" else p)
    assert module.estimate_precision("auto", torch.device("cpu"), compiled) == "fp32"
    assert module.estimate_precision("fp32", torch.device("cpu"), compiled) == "fp32"   # an explicit choice is kept
    if compiled:
        assert module.estimate_precision("int8", torch.device("cpu"), compiled) == "int8"


def test_int8_without_the_compiled_graph_or_an_unknown_precision_is_a_clear_error():
    model, ds, _ = ppca()
    with pytest.raises(ConfigError, match="int8 products are a rewrite of the compiled estimate"):
        log_likelihood(model, ds, k=3, precision="int8", compile=False)
    with pytest.raises(ConfigError, match="precision 'fp16' is unknown"):
        log_likelihood(model, ds, k=3, precision="fp16")


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("compile", [False, True])
def test_a_mixture_prior_enters_the_estimate_exactly(compile):
    """PPCA with its prior written as a mixture of two N(0, I) components: still the exact posterior, so the
    estimate is exact at any k, eager and compiled (the mixture density is the one log p(z) the estimate uses)."""
    model, ds, exact = ppca()
    mixed = build_model(dataclasses.replace(model.config, prior="mog", prior_components=2))
    state = model.state_dict()
    with torch.no_grad():
        mixed.latent_prior.mu.zero_()
        mixed.latent_prior.logvar.zero_()
        mixed.latent_prior.logits.copy_(torch.tensor([0.3, -1.0]))
    mixed.load_state_dict({**state, **{f"latent_prior.{k}": v for k, v in mixed.latent_prior.state_dict().items()}})
    r = log_likelihood(mixed.eval(), ds, k=3, compile=compile)
    torch.testing.assert_close(-r["per_example_nll"].float(), exact, atol=2e-4, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.compile
def test_the_compiled_estimate_with_a_flow_and_a_vampprior_is_the_eager_one():
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=(1, 4, 4), latent_dim=3, hidden_dims=(8,), prior="vamp", prior_components=5,
                                    posterior="iaf", flow_hidden=8)).eval()
    ds = Dataset(torch.rand(6, 1, 4, 4))
    torch.manual_seed(1)
    eager = log_likelihood(model, ds, k=40, compile=False)
    torch.manual_seed(1)
    compiled = log_likelihood(model, ds, k=40, compile=True)
    torch.testing.assert_close(compiled["per_example_nll"], eager["per_example_nll"], atol=1e-3, rtol=1e-5)
    assert eager["nll"] <= eager["neg_elbo"] + 1e-6 and eager["kl"] > 0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from vaekit import DataConfig, RunConfig, fit

    cfg = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(16,)), DataConfig("digits", val_size=100),
                    TrainConfig(epochs=1, precision="fp32"))
    return fit(cfg, tmp_path_factory.mktemp("run") / "run", progress=False, log=lambda s: None).run_dir


def test_limit_scores_the_first_n_or_a_seeded_random_n(digits_run):
    """--limit N: the estimate on N examples of the split (the first N, or a random N drawn with the seed): the
    same numbers as the estimate on those examples alone."""
    from vaekit import evaluate_run, load_data
    from vaekit.store.checkpoint import load_model

    first = evaluate_run(digits_run, nll_k=20, limit=30, progress=False)
    assert first["n"] == first["likelihood"]["n"] == 30 and first["split_size"] == 297
    model, config, _ = load_model(digits_run)
    test = load_data(config.data).test
    torch.manual_seed(0)
    evaluate_training_terms = __import__("vaekit").evaluate(model, test.subset(torch.arange(30)), config.train)
    assert first["objective"] == pytest.approx(evaluate_training_terms["loss"], rel=1e-12)
    drawn = evaluate_run(digits_run, nll_k=20, limit=30, limit_random=True, seed=3, progress=False)
    again = evaluate_run(digits_run, nll_k=20, limit=30, limit_random=True, seed=3, progress=False)
    assert drawn == {**again, "seconds": drawn["seconds"], "likelihood": {**again["likelihood"],
                                                                           "seconds": drawn["likelihood"]["seconds"]}}
    assert drawn["objective"] != first["objective"]
    whole = evaluate_run(digits_run, limit=10**6)   # more than the split: all of it
    assert whole["n"] == whole["split_size"] == 297
    with pytest.raises(ConfigError, match=r"limit=0 \(--limit\) is impossible"):
        evaluate_run(digits_run, limit=0)


def test_limit_from_the_command_line(digits_run, capsys):
    from vaekit.cli.main import main

    assert main(["eval", str(digits_run), "--nll-k", "10", "--limit", "30", "--limit-random", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "a random 30 of the 297 test examples" in out and "-log p(x)" in out


def test_a_long_estimate_says_how_far_it_is_every_tenth(monkeypatch):
    """Off a terminal: a line per 10% with the time left, once the estimate has run QUIET_SECONDS (it printed
    nothing for 6.7 minutes on 10,000 images)."""
    import io

    from vaekit.evaluation import eta as progress_module
    monkeypatch.setattr(progress_module, "QUIET_SECONDS", 0.0)
    out = io.StringIO()
    shown = progress_module.TimeLeft(1000, "log p(x), k=5,000", bar=False, stream=out)
    for _ in range(40):
        shown.update(25)
    shown.close()
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[1].split("%")[0] for line in lines] == [str(10 * t) for t in range(1, 10)]
    assert all("left" in line and "of 1,000 images" in line for line in lines)
    quiet = io.StringIO()
    shown = progress_module.TimeLeft(1000, "x", bar=False, stream=quiet)   # QUIET_SECONDS of 10 s: a quick estimate
    monkeypatch.setattr(progress_module, "QUIET_SECONDS", 10.0)
    shown.update(1000)
    assert quiet.getvalue() == ""


def test_the_estimate_reports_each_batch_to_its_progress():
    model = build_model(ModelConfig(input_shape=(1, 4, 4), latent_dim=2, hidden_dims=(8,)))
    seen = []
    log_likelihood(model, Dataset(torch.rand(37, 1, 4, 4)), k=8, batch_size=10, progress=seen.append)
    assert seen == [10, 10, 10, 7]
