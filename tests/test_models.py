"""One suite over every registered model x likelihood x architecture x latent size, on tiny synthetic data."""

import pytest
import torch

from conftest import synthetic_splits
from vaekit import LIKELIHOODS, LOSSES, MODELS, ModelConfig, TrainConfig, build_model
from vaekit.errors import ConfigError
from vaekit.models.nets import ARCHITECTURES
from vaekit.models.objectives import LossContext

SHAPE = (1, 6, 6)
VARIANTS = [(m, lik) for m in MODELS for lik in LIKELIHOODS]


def make(model="vae", likelihood="bernoulli", latent_dim=2, arch="mlp", **kw):
    kw.setdefault("num_classes", 3)  # the conditional VAE's labels (synthetic_splits has 3 classes); others ignore it
    return build_model(ModelConfig(model=model, input_shape=SHAPE, latent_dim=latent_dim, hidden_dims=(16, 8),
                                   likelihood=likelihood, arch=arch, **kw))


@pytest.mark.parametrize("model_name,likelihood", VARIANTS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("latent_dim", [1, 2, 5])
def test_forward_loss_step_generate(model_name, likelihood, arch, latent_dim):
    model = make(model_name, likelihood, latent_dim, arch)
    train = synthetic_splits(SHAPE).train
    x, bound = train.x[:8], model.given(train.y[:8])
    cfg = TrainConfig(loss=MODELS[model_name].default_loss, mc_samples=2)
    terms = LOSSES[cfg.loss](bound, x, LossContext(cfg))
    assert set(terms) == {"loss", "recon", "kl"} and all(v.shape == (8,) for v in terms.values())
    assert all(torch.isfinite(v).all() for v in terms.values())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    terms["loss"].mean().backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.generate(5).shape == (5, *SHAPE)
    recon = bound.reconstruct(x)
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    mode = bound.encode(x).mode     # the code the decoder reads (a VQ-VAE: codes x code_dim; hvae: every layer)
    assert mode.shape[0] == 8 and bound.decode(mode).mean.shape == x.shape


def test_elbo_terms_follow_their_definitions():
    model = make("vae", latent_dim=3)
    x = synthetic_splits(SHAPE).train.x[:6]
    q = model.encode(x)
    torch.manual_seed(1)
    terms = LOSSES["elbo"](model, x, LossContext(TrainConfig(beta=2.0)))
    torch.manual_seed(1)
    z = q.rsample(1)
    torch.testing.assert_close(terms["recon"], -model.decode(z).log_prob(x).mean(0))
    torch.testing.assert_close(terms["kl"], q.kl())
    torch.testing.assert_close(terms["loss"], terms["recon"] + 2.0 * terms["kl"])


def test_monte_carlo_kl_agrees_with_closed_form_on_average():
    model = make("vae", latent_dim=4)
    x = synthetic_splits(SHAPE).train.x[:4]
    mc = LOSSES["elbo"](model, x, LossContext(TrainConfig(kl="mc", mc_samples=20_000)))["kl"]
    exact = LOSSES["elbo"](model, x, LossContext(TrainConfig()))["kl"]
    torch.testing.assert_close(mc, exact, atol=0.05, rtol=0.02)


def test_more_samples_reduce_the_variance_of_the_reconstruction_term():
    model = make("vae", latent_dim=2)
    x = synthetic_splits(SHAPE).train.x[:1]
    spread = lambda L: torch.stack([LOSSES["elbo"](model, x, LossContext(TrainConfig(mc_samples=L)))["recon"] for _ in range(200)]).std()  # noqa: E731
    assert spread(16) < spread(1) / 2


def test_elbo_needs_a_stochastic_encoder():
    with pytest.raises(ConfigError, match="stochastic encoder"):
        LOSSES["elbo"](make("ae"), torch.rand(2, *SHAPE), LossContext(TrainConfig()))


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="needs a codebook"):
        LOSSES["vq"](make("vae"), torch.rand(2, *SHAPE), LossContext(TrainConfig()))
    for kw in ({"model": "gan"}, {"likelihood": "poisson"}, {"activation": "swishy"}, {"arch": "transformer"}):
        with pytest.raises(ConfigError, match="unknown"):
            make(**kw)


def test_models_do_not_hard_code_sizes():
    model = build_model(ModelConfig(input_shape=(3, 5, 7), latent_dim=4, hidden_dims=(11,)))
    assert model.generate(2).shape == (2, 3, 5, 7)
    assert model.encoder[0].in_features == 105 and model.decoder[-1].out_features == 105


def test_bf16_autocast_does_not_change_the_reported_loss():
    from vaekit import Dataset, evaluate

    model = make("vae", latent_dim=3)
    ds = Dataset(synthetic_splits(SHAPE, n=300).train.x)
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(5)
        results[precision] = evaluate(model, ds, TrainConfig(precision=precision))["loss"]
    assert results["bf16"] == pytest.approx(results["fp32"], rel=2e-3)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_registered_loss_trains_a_vae(loss):
    model = make("vqvae" if loss == "vq" else "vae", latent_dim=3)  # vq needs the codebook
    x = synthetic_splits(SHAPE).train.x[:8]
    cfg = TrainConfig(loss=loss, mc_samples=3)
    terms = LOSSES[loss](model, x, LossContext(cfg, 0.5))
    assert all(v.shape == (8,) and torch.isfinite(v).all() for v in terms.values())
    terms["loss"].mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_kl_warm_up_and_the_capacity_schedule():
    from vaekit.models.objectives import kl_weight

    cfg = TrainConfig(beta=4.0, kl_warmup_epochs=2.0)
    assert [kl_weight(cfg, e) for e in (0.0, 1.0, 2.0, 7.0)] == [0.0, 2.0, 4.0, 4.0]
    assert kl_weight(TrainConfig(beta=4.0), 0.0) == 4.0
    model = make("vae", latent_dim=3)
    x = synthetic_splits(SHAPE).train.x[:8]
    cfg = TrainConfig(loss="capacity", capacity=10.0, capacity_epochs=4.0, gamma=100.0)
    for epoch, c in ((0.0, 0.0), (2.0, 5.0), (9.0, 10.0)):
        torch.manual_seed(0)
        t = LOSSES["capacity"](model, x, LossContext(cfg, epoch))
        torch.testing.assert_close(t["loss"], t["recon"] + 100.0 * (t["kl"] - c).abs())
    torch.manual_seed(0)
    warm = LOSSES["elbo"](model, x, LossContext(TrainConfig(beta=4.0, kl_warmup_epochs=2.0), 1.0))
    torch.testing.assert_close(warm["loss"], warm["recon"] + 2.0 * warm["kl"])


def test_label_codes_are_one_hot_codes():
    import torch.nn.functional as F

    from vaekit.models.family import label_code
    y = torch.tensor([0, 3, 9, 3])
    torch.testing.assert_close(label_code(y, 10, torch.Size([2, 4]), "cpu"),
                               F.one_hot(y, 10).float().expand(2, 4, 10), rtol=0, atol=0)
    torch.testing.assert_close(label_code(7, 10, torch.Size([3]), "cpu"), F.one_hot(torch.tensor(7), 10).float().expand(3, 10))
