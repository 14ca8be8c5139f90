"""Every registered model x architecture x likelihood end to end through the public API (on
synthetic labelled 8-bit images saved as .npz), and the variants from the command line (on
scikit-learn's bundled 8x8 digits): train, save / load round trip, evaluate with an
importance-sampled NLL, sample, and every figure that applies."""

import dataclasses
import json
import math

import pytest
import torch
from PIL import Image

from vaekit import LIKELIHOODS, MODELS, POSTERIORS, PRIORS, DataConfig, ModelConfig, RunConfig, TrainConfig, fit, load_data, plots
from vaekit.cli.main import main
from vaekit.errors import ConfigError
from vaekit.evaluation.evaluate import evaluate_run
from vaekit.models.nets import ARCHITECTURES
from vaekit.outputs.sampling import sample_run
from vaekit.store.checkpoint import load_model

DATA = DataConfig("digits", val_size=100)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_data(DATA)


def train(root, model: str, arch: str, data, data_cfg=DATA, likelihood="bernoulli", **train_kw):
    config = RunConfig(ModelConfig(model=model, latent_dim=2, hidden_dims=(8, 16) if arch == "conv" else (16,), arch=arch,
                                   likelihood=likelihood), data_cfg,
                       TrainConfig(**{"loss": MODELS[model].default_loss, "epochs": 1, "batch_size": 128,
                                      "precision": "fp32", **({"prior_epochs": 1} if MODELS[model].discrete else {}),
                                      **train_kw}))
    return fit(config, root / f"{model}-{arch}", data=data, progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def eight_bit(tmp_path_factory):
    """Labelled synthetic 8-bit images (1 x 8 x 8, 3 classes) as an .npz, and their splits."""
    path = _eight_bit_images(tmp_path_factory.mktemp("npz") / "imgs.npz", n=150, side=8)
    cfg = DataConfig("npy", path=str(path), val_size=20)
    return cfg, load_data(cfg)


def _every_model_arch_likelihood():
    """Every model x architecture x likelihood; the fast tier (-m "not slow") keeps a diagonal in which each model,
    each architecture and each likelihood appears at least once, and the rest are marked slow."""
    models, archs, likelihoods = list(MODELS), list(ARCHITECTURES), list(LIKELIHOODS)
    n = max(len(models), len(archs), len(likelihoods))
    diagonal = {(models[i % len(models)], archs[i % len(archs)], likelihoods[i % len(likelihoods)]) for i in range(n)}
    return [pytest.param(m, a, lk, id=f"{m}-{a}-{lk}", marks=() if (m, a, lk) in diagonal else pytest.mark.slow)
            for m in models for a in archs for lk in likelihoods]


@pytest.mark.parametrize("model_name,arch,likelihood", _every_model_arch_likelihood())
def test_train_reload_evaluate_sample_and_plot(tmp_path, eight_bit, model_name, arch, likelihood):
    data_cfg, data = eight_bit
    result = train(tmp_path, model_name, arch, data, data_cfg, likelihood)
    run_dir = result.run_dir
    model, config, epoch = load_model(run_dir)
    assert epoch == 1 and config.model.model == model_name
    x, y = data.test.head(5), data.test.y[:5]
    for a, b in zip(result.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    first = model.given(y).reconstruct(x)
    torch.manual_seed(3)
    assert torch.equal(first, result.model.given(y).reconstruct(x))

    stochastic = MODELS[model_name].stochastic
    report = evaluate_run(run_dir, nll_k=3 if stochastic else None)
    assert report["n"] == len(data.test) and torch.isfinite(torch.tensor(report["objective"]))
    if stochastic:   # log p(x) is estimated, and bounds the ELBO
        assert report["likelihood"]["nll"] <= report["likelihood"]["neg_elbo"] + 1.0
    else:
        with pytest.raises(ConfigError, match="no stochastic encoder"):
            evaluate_run(run_dir, nll_k=3)

    png = sample_run(run_dir, n=12, out=tmp_path / "s.png")
    assert Image.open(png).size[0] > 0
    written = plots.plot_run(run_dir, out=tmp_path / "figures", log=None)
    assert set(written.written) | set(written.skipped) == set(plots.KINDS)
    assert {"samples", "reconstructions", "curves"} <= set(written.written)


COMBINATIONS = [(m, prior, post) for m in MODELS for prior in PRIORS for post in POSTERIORS
                if (prior, post) != ("standard", "gaussian")]   # that one: every model in the test above


def _every_prior_posterior_model():
    """COMBINATIONS; the fast tier keeps each prior x posterior pair with one stochastic model (in turn) and each
    model with a point code once (refused), the rest are marked slow."""
    pairs = list(dict.fromkeys((prior, post) for _, prior, post in COMBINATIONS))
    stochastic = [m for m in MODELS if MODELS[m].stochastic]
    fast = {(stochastic[i % len(stochastic)], *pair) for i, pair in enumerate(pairs)}
    fast |= {(m, *pairs[-1]) for m in MODELS if not MODELS[m].stochastic}
    return [pytest.param(*c, id="-".join(c), marks=() if c in fast else pytest.mark.slow) for c in COMBINATIONS]


@pytest.mark.parametrize(("model_name", "prior", "posterior"), _every_prior_posterior_model())
def test_every_prior_and_posterior_with_every_model(tmp_path, eight_bit, model_name, prior, posterior):
    """Each prior x posterior x model trains, reloads, estimates log p(x), samples and plots, or is refused in one
    line where it cannot apply (a point code has no KL to learn a prior from, nor a posterior to flow)."""
    data_cfg, data = eight_bit
    cls = MODELS[model_name]
    model_cfg = ModelConfig(model=model_name, latent_dim=2, hidden_dims=(16,), prior=prior, posterior=posterior,
                            **({"prior_components": 3} if prior != "standard" else {}),
                            **({"flow_hidden": 8} if posterior == "iaf" else {}))
    config = RunConfig(model_cfg, data_cfg, TrainConfig(epochs=1, batch_size=32, precision="fp32",
                                                        **({"prior_epochs": 1} if cls.discrete else {})))
    usable = (cls.stochastic and not cls.discrete and not (prior == "vamp" and cls.conditional)
              and (posterior == "gaussian" or "posterior" in cls.reads))
    if not usable:
        with pytest.raises(ConfigError) as refused:
            fit(config, tmp_path / "run", data=data, progress=False, log=lambda s: None)
        assert "\n" not in str(refused.value) and not (tmp_path / "run" / "checkpoint").exists()
        return
    result = fit(config, tmp_path / "run", data=data, progress=False, log=lambda s: None)
    assert math.isfinite(result.history[-1]["train_loss"])
    model, loaded, _ = load_model(result.run_dir)
    assert (loaded.model.prior, loaded.model.posterior) == (prior, posterior)
    for a, b in zip(result.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    report = evaluate_run(result.run_dir, nll_k=4)
    assert report["likelihood"]["nll"] <= report["likelihood"]["neg_elbo"] + 1.0
    assert Image.open(sample_run(result.run_dir, n=6, out=tmp_path / "s.png")).size[0] > 0
    written = plots.plot_run(result.run_dir, out=tmp_path / "figures", log=None)
    assert {"samples", "reconstructions", "curves"} <= set(written.written)


def test_a_conditional_vae_draws_the_label_it_is_given(tmp_path, digits):
    run_dir = train(tmp_path, "cvae", "mlp", digits).run_dir
    model, _, _ = load_model(run_dir)
    assert model.config.num_classes == 10
    torch.manual_seed(0)
    threes = model.generate(4, label=3)
    torch.manual_seed(0)
    sevens = model.generate(4, label=7)
    assert (threes - sevens).abs().mean() > 1e-3          # same z, another label: another image
    x = digits.test.head(4)
    q3, q7 = model.encode(x, torch.full((4,), 3)), model.encode(x, torch.full((4,), 7))
    assert not torch.allclose(q3.mu, q7.mu)                # the encoder sees the label too

    grid = sample_run(run_dir, n=20, out=tmp_path / "all.png")           # one column per class
    one = sample_run(run_dir, n=20, out=tmp_path / "seven.png", label=7)
    assert Image.open(grid).size != Image.open(one).size
    for label, message in ((10, r"knows labels 0\.\.9"), (-1, r"knows labels 0\.\.9")):
        with pytest.raises(ConfigError, match=message):
            sample_run(run_dir, n=4, out=tmp_path / "bad.png", label=label)
    with pytest.raises(ConfigError, match="needs a label"):
        model.encode(x)
    opt = plots.PlotOptions(label=7, resolution=4)
    for kind in ("manifold", "traversal"):
        fig, reason = plots.figure(kind, [plots.open_run(run_dir)], opt)
        assert reason is None and "given y = 7" in fig._suptitle.get_text() + "".join(a.get_title() for a in fig.axes)


def test_the_label_flag_is_refused_for_an_unconditional_model(tmp_path, digits, capsys):
    run_dir = train(tmp_path, "vae", "mlp", digits).run_dir
    assert main(["sample", str(run_dir), "--label", "3", "--out", str(tmp_path / "s.png")]) != 0
    err = capsys.readouterr().err
    assert "not a conditional model" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.png").exists()


def test_a_conditional_vae_needs_labelled_data(tmp_path, capsys):
    from vaekit import build_model

    with pytest.raises(ConfigError, match="needs labelled data"):
        build_model(ModelConfig(model="cvae", input_shape=(1, 4, 4), num_classes=0))
    path = _eight_bit_images(tmp_path / "unlabelled.npy")                # an .npy: images, no labels
    assert main(["train", "--data", "npy", "--path", str(path), "--model", "cvae", "--val-size", "0",
                 "--run-dir", str(tmp_path / "r"), "--no-report", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "conditioned on labels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "checkpoint").exists()


def test_cvae_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "cvae"
    assert main(["train", "--data", "digits", "--model", "cvae", "--latent-dim", "2", "--hidden", "16",
                 "--epochs", "1", "--val-size", "100", "--run-dir", str(run), "--no-report", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--nll-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["likelihood"]["k"] == 4 and out["model"] == "cvae"
    assert main(["sample", str(run), "--label", "7", "-n", "8", "--out", str(tmp_path / "7.png")]) == 0
    assert main(["plot", str(run), "--kind", "manifold", "--label", "7", "--resolution", "3"]) == 0
    assert (run / "figures" / "manifold.png").exists()


def test_vqvae_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "vq"
    assert main(["train", "--data", "digits", "--model", "vqvae", "--latent-dim", "4", "--code-dim", "3",
                 "--codebook-size", "16", "--hidden", "16", "--epochs", "2", "--prior-epochs", "2", "--val-size", "100",
                 "--run-dir", str(run), "--no-report", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "code prior epoch 2/2" in out and "perplexity" in out and "dead codes" in out   # each epoch logs the codebook's use
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 1 <= last["val_perplexity"] <= 16 and 0 <= last["val_dead_codes"] < 16
    assert main(["eval", str(run), "--json"]) == 0
    codes = json.loads(capsys.readouterr().out)["codes"]
    assert 1 <= codes["perplexity"] <= 16 and codes["codes_used"] + codes["dead_codes"] == 16
    assert codes["nll_bound"] == pytest.approx(codes["recon"] + codes["prior_nll"])
    assert codes["prior_nll"] < 4 * torch.tensor(16.0).log().item()     # the fitted prior beats uniform codes
    assert main(["eval", str(run)]) == 0
    assert "codebook perplexity" in capsys.readouterr().out
    assert main(["eval", str(run), "--nll-k", "5"]) != 0
    err = capsys.readouterr().err
    assert "no stochastic encoder" in err and len(err.strip().splitlines()) == 1
    assert main(["sample", str(run), "-n", "8", "--out", str(tmp_path / "vq.png")]) == 0
    assert main(["plot", str(run), "--kind", "manifold"]) == 0
    assert "VQ-VAE" in capsys.readouterr().out and not (run / "figures" / "manifold.png").exists()


def test_an_ema_codebook_trains(tmp_path, digits):
    result = train(tmp_path, "vqvae", "mlp", digits, prior_epochs=1)
    before = result.model.quantiser.codebook.clone()
    config = dataclasses.replace(result.config, model=dataclasses.replace(result.config.model, codebook_ema=True))
    ema = fit(config, tmp_path / "ema", data=digits, progress=False, log=lambda s: None).model
    assert "quantiser.codebook" not in dict(ema.named_parameters()) and not torch.equal(ema.quantiser.codebook, before)


def _eight_bit_images(path, n=60, side=6):
    """Synthetic 8-bit greyscale images (values k/255) of 3 classes: uint8 x (and labels y in an .npz)."""
    import numpy as np

    g = np.random.default_rng(0)
    base = g.integers(0, 256, size=(3, side, side))
    labels = g.integers(0, 3, size=n)
    x = np.clip(base[labels] + g.integers(-20, 21, size=(n, side, side)), 0, 255).astype(np.uint8)
    if str(path).endswith(".npz"):
        np.savez(path, x=x, y=labels)
    else:
        np.save(path, x)
    return path


def test_the_discretised_logistic_trains_on_8_bit_images_and_reports_bits_per_dim(tmp_path, capsys):
    path = _eight_bit_images(tmp_path / "imgs.npy")
    run = tmp_path / "dl"
    assert main(["train", "--data", "npy", "--path", str(path), "--likelihood", "discretised-logistic", "--latent-dim", "2",
                 "--hidden", "16", "--epochs", "40", "--batch-size", "16", "--lr", "3e-3", "--val-size", "0", "--run-dir", str(run), "--no-report",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--nll-k", "8", "--json"]) == 0
    ll = json.loads(capsys.readouterr().out)["likelihood"]
    assert ll["bits_per_dim"] == pytest.approx(ll["nll"] / (36 * math.log(2)))
    assert 0 < ll["bits_per_dim"] < 8     # a true likelihood of 8-bit pixels: below the 8 bits of a uniform guess
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "dl.png")]) == 0


def test_the_discretised_logistic_refuses_data_between_the_256_levels(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--likelihood", "discretised-logistic", "--epochs", "1", "--val-size", "100",
                 "--run-dir", str(tmp_path / "r"), "--no-report", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "256-level" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "r" / "checkpoint").exists()
