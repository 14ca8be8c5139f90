"""The VQ-VAE's pieces against direct computations: nearest codes, the straight-through gradient,
the codebook / commitment terms, the EMA codebook, codebook usage, and the code prior."""

import itertools
import math

import pytest
import torch

from vaekit import LOSSES, ModelConfig, TrainConfig, build_model
from vaekit.models.objectives import LossContext
from vaekit.models.vq import CodePrior, VectorQuantiser, codebook_usage, fit_code_prior


def test_each_vector_gets_its_nearest_code_and_the_terms_follow_their_definitions():
    vq = VectorQuantiser(size=7, dim=3)
    with torch.no_grad():
        vq.codebook.normal_()
    z_e = torch.randn(5, 4, 3, requires_grad=True)                       # 5 examples x 4 codes x 3 numbers
    q = vq(z_e)
    expected = torch.cdist(z_e.detach().reshape(-1, 3), vq.codebook.detach()).argmin(1).reshape(5, 4)
    assert torch.equal(q.indices, expected)
    e = vq.codebook.detach()[expected]
    torch.testing.assert_close(q.e, e)
    torch.testing.assert_close(q.commitment_loss, (z_e.detach() - e).pow(2).sum((1, 2)))
    torch.testing.assert_close(q.codebook_loss, (z_e.detach() - e).pow(2).sum((1, 2)))
    torch.testing.assert_close(q.mode, e.reshape(5, 12))                 # forward: the codes


def test_the_straight_through_gradient_reaches_the_encoder_and_the_codebook_terms_move_the_right_side():
    vq = VectorQuantiser(size=4, dim=2)
    z_e = torch.randn(3, 2, 2, requires_grad=True)
    q = vq(z_e)
    w = torch.randn(3, 4)
    (q.mode * w).sum().backward()
    torch.testing.assert_close(z_e.grad.reshape(3, 4), w)              # d(decoder input)/d z_e = identity
    assert vq.codebook.grad is None                                      # the reconstruction does not move the codes
    z_e.grad = None
    vq(z_e).codebook_loss.sum().backward()
    assert z_e.grad is None or z_e.grad.abs().sum() == 0 and vq.codebook.grad.abs().sum() > 0
    vq.codebook.grad = None
    vq(z_e).commitment_loss.sum().backward()
    assert z_e.grad.abs().sum() > 0 and vq.codebook.grad is None


def test_the_ema_codebook_moves_to_the_mean_of_its_vectors():
    vq = VectorQuantiser(size=2, dim=2, ema=True, decay=0.0, eps=1e-9, restarts=False)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    z_e = torch.tensor([[[-2.0, 1.0]], [[-1.0, 3.0]], [[3.0, 0.0]]])    # two near code 0, one near code 1
    q = vq.train()(z_e)
    assert q.codebook_loss.abs().sum() == 0 and q.indices.flatten().tolist() == [0, 0, 1]
    torch.testing.assert_close(vq.codebook, torch.tensor([[-1.5, 2.0], [3.0, 0.0]]))
    vq.eval()(z_e)                                                        # evaluation leaves the codebook alone
    torch.testing.assert_close(vq.codebook, torch.tensor([[-1.5, 2.0], [3.0, 0.0]]))


def test_the_codebook_starts_at_the_data_and_dead_codes_restart():
    vq = VectorQuantiser(size=8, dim=2)
    z_e = torch.randn(64, 1, 2) * 3 + 10                                  # far from the initial codebook near 0
    q = vq.train()(z_e.requires_grad_())                                 # a training step (grad enabled)
    assert vq.started and (vq.codebook - 10).abs().max() < 15          # every code moved onto the data
    assert codebook_usage(q.indices, 8)["codes_used"] > 1
    with torch.no_grad():
        vq.codebook[3] = 1e3                                              # a code nothing is near: it dies
    for _ in range(60):                                                  # its share decays by 0.9 a step
        vq(z_e)
    assert (vq.codebook[3] - 10).abs().max() < 15                       # restarted at one of the data


def test_codebook_usage():
    assert codebook_usage(torch.arange(8), 8) == {"perplexity": pytest.approx(8.0), "codes_used": 8, "dead_codes": 0,
                                                  "codebook_size": 8}
    one = codebook_usage(torch.full((10,), 3), 8)
    assert one["perplexity"] == pytest.approx(1.0) and one["dead_codes"] == 7
    half = codebook_usage(torch.tensor([0, 0, 0, 1]), 4)
    assert half["perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_the_code_prior_is_a_normalised_distribution_and_samples_follow_it():
    prior = CodePrior(size=3, positions=2, hidden=8).eval()
    every = torch.tensor(list(itertools.product(range(3), repeat=2)))   # all 9 sequences
    p = prior.log_prob(every).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.manual_seed(0)
    draws = prior.sample(20_000)
    freq = torch.bincount(draws[:, 0] * 3 + draws[:, 1], minlength=9).float() / len(draws)
    torch.testing.assert_close(freq, p.detach(), atol=0.015, rtol=0)


def test_fitting_the_prior_learns_dependent_codes():
    first = torch.randint(0, 4, (512,))
    data = torch.stack([first, (first + 1) % 4, first], dim=1)         # codes 2 and 3 follow from code 1
    prior = CodePrior(size=4, positions=3, hidden=16)
    history = fit_code_prior(prior, data, epochs=30, batch_size=64, lr=1e-2, log=lambda s: None)
    assert history[0] > history[-1] and history[-1] < math.log(4) + 0.2   # close to the entropy of code 1 alone


@pytest.mark.parametrize("ema", [False, True])
def test_vq_loss_and_generation(ema):
    model = build_model(ModelConfig(model="vqvae", input_shape=(1, 4, 4), latent_dim=3, hidden_dims=(8,),
                                    codebook_size=5, code_dim=2, codebook_ema=ema)).eval()  # eval: no EMA step between calls
    x = torch.rand(6, 1, 4, 4)
    cfg = TrainConfig(loss="vq", commitment=0.5)
    terms = LOSSES["vq"](model, x, LossContext(cfg))
    q = model.encode(x)
    recon = -model.decode(q.mode).log_prob(x)
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["loss"], recon + q.codebook_loss + 0.5 * q.commitment_loss)
    torch.testing.assert_close(terms["kl"], torch.full((6,), 3 * math.log(5)))
    assert model.generate(4).shape == (4, 1, 4, 4)
    assert ema == ("quantiser.codebook" in dict(model.named_buffers()))   # EMA: a buffer, not a parameter


def test_a_convolutional_vq_vae_has_one_code_per_position_of_its_last_feature_map():
    model = build_model(ModelConfig(model="vqvae", arch="conv", input_shape=(1, 28, 28), hidden_dims=(8, 16),
                                    codebook_size=32, code_dim=4)).eval()
    assert model.code_positions == 49                                     # 28 -> 14 -> 7: a 7 x 7 grid
    x = torch.rand(3, 1, 28, 28)
    q = model.encode(x)
    assert q.z_e.shape == (3, 49, 4) and q.indices.shape == (3, 49) and model.code_prior.positions == 49
    feature_map = model.encoder.head(model.encoder.features(x))            # (3, 4, 7, 7): the grid itself
    torch.testing.assert_close(q.z_e[:, 7 * 2 + 5], feature_map[:, :, 2, 5])   # position (2, 5) in raster order
    assert model.decode(q.mode).mean.shape == (3, 1, 28, 28) and model.generate(2).shape == (2, 1, 28, 28)
    terms = LOSSES["vq"](model, x, LossContext(TrainConfig()))
    torch.testing.assert_close(terms["kl"], torch.full((3,), 49 * math.log(32)))


@pytest.mark.parametrize("arch, shape, grid", [("conv", (1, 28, 28), (7, 7)), ("conv", (3, 16, 24), (4, 6)), ("mlp", (1, 8, 8), (1, 6))])
def test_the_code_grid_is_the_encoders_output_layout(arch, shape, grid):
    """code_grid (what the explorer draws) matches the numbers the encoder emits: rows x columns codes of code_dim."""
    model = build_model(ModelConfig(model="vqvae", arch=arch, input_shape=shape, latent_dim=6,
                                    hidden_dims=(8, 16) if arch == "conv" else (32,)))
    assert model.code_grid == grid and model.code_positions == grid[0] * grid[1]
    assert model.encoder(torch.zeros(2, *shape)).shape == (2, grid[0] * grid[1] * model.config.code_dim)
