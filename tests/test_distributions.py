"""Each formula against an independent computation: torch.distributions, Monte Carlo, closed forms."""

import math

import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from vaekit import Bernoulli, DiagonalGaussian, gaussian_kl
from vaekit.models.distributions import sum_softplus


def _gauss(b=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 0.5


def _torch_normal(mu, logvar):
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def test_kl_to_standard_normal_matches_torch():
    mu, logvar = _gauss()
    ours = DiagonalGaussian(mu, logvar).kl()
    ref = kl_divergence(_torch_normal(mu, logvar), _torch_normal(torch.zeros_like(mu), torch.zeros_like(mu)))
    torch.testing.assert_close(ours, ref)


def test_kl_between_diagonal_gaussians_matches_torch():
    (mu0, lv0), (mu1, lv1) = _gauss(seed=1), _gauss(seed=2)
    ours = DiagonalGaussian(mu0, lv0).kl(DiagonalGaussian(mu1, lv1))
    torch.testing.assert_close(ours, kl_divergence(_torch_normal(mu0, lv0), _torch_normal(mu1, lv1)))


def test_kl_closed_form_matches_monte_carlo():
    mu, logvar = _gauss(b=2, d=3, seed=3)
    q = DiagonalGaussian(mu, logvar)
    z = q.sample(200_000)                                             # (S, B, D)
    mc = (q.log_prob(z) - DiagonalGaussian.standard((3,)).log_prob(z)).mean(0)
    se = (q.log_prob(z) - DiagonalGaussian.standard((3,)).log_prob(z)).std(0) / math.sqrt(200_000)
    assert torch.all((mc - q.kl()).abs() < 5 * se)


def test_kl_of_a_distribution_with_itself_is_zero():
    mu, logvar = _gauss()
    p = DiagonalGaussian(mu, logvar)
    torch.testing.assert_close(p.kl(p), torch.zeros(4))
    cov = torch.eye(3) * 2 + 0.5
    torch.testing.assert_close(gaussian_kl(mu[0], cov, mu[0], cov), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_full_covariance_kl_matches_torch_multivariate_normal():
    g = torch.Generator().manual_seed(4)
    a0, a1 = torch.randn(5, 4, 4, generator=g), torch.randn(5, 4, 4, generator=g)
    cov0, cov1 = a0 @ a0.mT + 0.5 * torch.eye(4), a1 @ a1.mT + 0.5 * torch.eye(4)
    mu0, mu1 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    ref = kl_divergence(MultivariateNormal(mu0, cov0), MultivariateNormal(mu1, cov1))
    torch.testing.assert_close(gaussian_kl(mu0, cov0, mu1, cov1), ref, rtol=1e-4, atol=1e-4)


def test_full_covariance_kl_reduces_to_diagonal_kl():
    mu, logvar = _gauss(b=1, d=4, seed=5)
    diag = DiagonalGaussian(mu[0], logvar[0]).kl()
    full = gaussian_kl(mu[0], torch.diag(torch.exp(logvar[0])), torch.zeros(4), torch.eye(4))
    torch.testing.assert_close(full, diag, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("event_shape", [(3,), (1, 2, 2)])
def test_gaussian_log_prob_and_entropy_match_torch(event_shape):
    g = torch.Generator().manual_seed(6)
    mu, logvar, x = (torch.randn(4, *event_shape, generator=g) for _ in range(3))
    ours = DiagonalGaussian(mu, logvar, event_ndim=len(event_shape))
    ref = Independent(Normal(mu, torch.exp(0.5 * logvar)), len(event_shape))
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    assert ours.log_prob(x).shape == (4,)


def test_bernoulli_log_prob_matches_torch_for_binary_and_grey_targets():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 1, 3, 3, generator=g) * 3
    binary = torch.bernoulli(torch.full((4, 1, 3, 3), 0.5), generator=g)
    ref = Independent(TorchBernoulli(logits=logits), 3).log_prob(binary)
    torch.testing.assert_close(Bernoulli(logits, event_ndim=3).log_prob(binary), ref)
    grey = torch.rand(4, 1, 3, 3, generator=g)  # grey targets: the cross-entropy pytorch/examples uses
    by_hand = (grey * torch.log(torch.sigmoid(logits)) + (1 - grey) * torch.log(1 - torch.sigmoid(logits))).sum((1, 2, 3))
    torch.testing.assert_close(Bernoulli(logits, event_ndim=3).log_prob(grey), by_hand, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("event_shape", [(1, 28, 28), (7,), (131,), (3, 32, 32)])
def test_sum_softplus_blockwise_product_matches_softplus(event_shape):
    """The evaluation path's one-log-per-block softplus against float64 softplus, logits up to +-30."""
    g = torch.Generator().manual_seed(3)
    t = torch.randn(6, 5, *event_shape, generator=g) * 12
    t.view(-1)[:40] = torch.tensor([30.0, -30.0] * 20)
    exact = torch.nn.functional.softplus(t.double()).flatten(2).sum(-1)
    got = sum_softplus(t, len(event_shape))
    assert got.shape == (6, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("grad", [True, False])
def test_bernoulli_log_prob_is_the_same_with_and_without_gradients(grad):
    """Training (BCE) and evaluation (blockwise product) are two computations of one log-density."""
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(3, 8, 1, 28, 28, generator=g) * 8).requires_grad_(grad)
    x = torch.bernoulli(torch.full((8, 1, 28, 28), 0.3), generator=g)
    exact = Independent(TorchBernoulli(logits=logits.detach().double().clamp(-30, 30)), 3).log_prob(x.double())
    with torch.set_grad_enabled(grad):
        lp = Bernoulli(logits, event_ndim=3).log_prob(x)
    assert lp.requires_grad == grad
    torch.testing.assert_close(lp.detach().double(), exact, rtol=1e-6, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bernoulli_gradient_is_the_unclamped_gradient(dtype):
    """The training log-density's gradient against autograd through the float64 cross-entropy without any clamp,
    logits out to +-80 and grey targets: x - sigmoid(l) everywhere, to float32 (or bf16) rounding, including
    beyond the +-30 the value is clamped to (where the gradient of clamp() would be 0). With a weighted sum of the
    per-example values, so each example's incoming gradient is checked too."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 6, 1, 7, 7, generator=g) * 25).clamp(-80, 80).to(dtype)
    x = torch.rand(6, 1, 7, 7, generator=g)
    weights = torch.rand(2, 6, generator=g) + 0.5
    leaf = logits.clone().requires_grad_()
    (Bernoulli(leaf, event_ndim=3).log_prob(x) * weights).sum().backward()
    ref = logits.double().requires_grad_()
    exact = -torch.nn.functional.binary_cross_entropy_with_logits(ref, x.double().expand_as(ref), reduction="none")
    (exact.sum((2, 3, 4)) * weights.double()).sum().backward()
    assert leaf.grad.dtype == dtype and (logits.abs() > 30).any()
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    torch.testing.assert_close(leaf.grad.double(), ref.grad, **tol)


def test_bernoulli_log_density_has_the_targets_gradient_too():
    """d/dx of sum x l - softplus(l) is l (at the clamped logits), summed over a leading sample dimension that x
    broadcasts against: what autograd through the cross-entropy gives."""
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 4, 10, generator=g) * 10
    x = torch.rand(4, 10, generator=g).requires_grad_()
    Bernoulli(logits).log_prob(x).sum().backward()
    xr = x.detach().double().requires_grad_()
    (-torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), xr.expand(3, 4, 10), reduction="sum")).backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=1e-5, rtol=1e-6)


def test_log_prob_broadcasts_over_a_leading_sample_dimension():
    logits = torch.randn(5, 4, 6)           # (L, B, D)
    x = torch.rand(4, 6)
    lp = Bernoulli(logits).log_prob(x)
    assert lp.shape == (5, 4)
    torch.testing.assert_close(lp[2], Bernoulli(logits[2]).log_prob(x))


def test_rsample_is_reparameterised_and_gradients_reach_mu_and_logvar():
    mu = torch.zeros(3, 2, requires_grad=True)
    logvar = torch.zeros(3, 2, requires_grad=True)
    z = DiagonalGaussian(mu, logvar).rsample(4)
    assert z.shape == (4, 3, 2)
    (z**2).sum().backward()
    assert mu.grad is not None and logvar.grad is not None
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_samples_have_the_right_moments():
    q = DiagonalGaussian(torch.tensor([1.0, -2.0]), torch.log(torch.tensor([0.25, 4.0])))
    z = q.sample(100_000)
    torch.testing.assert_close(z.mean(0), q.mu, atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), torch.tensor([0.25, 4.0]), atol=0.05, rtol=0.02)


def _logistic(loc, scale):
    """An independent logistic distribution: the inverse sigmoid of a uniform, shifted and scaled."""
    from torch.distributions import AffineTransform, SigmoidTransform, TransformedDistribution, Uniform

    return TransformedDistribution(Uniform(torch.zeros_like(loc), torch.ones_like(loc)),
                                   [SigmoidTransform().inv, AffineTransform(loc, scale)])


def test_the_discretised_logistic_is_a_probability_mass_over_the_256_levels():
    from vaekit.models.distributions import DiscretisedLogistic

    loc = torch.tensor([0.0, 0.3, 0.5, 0.97, 1.2])
    log_scale = torch.tensor([-3.0, -1.0, -6.0, -4.0, -2.0])
    levels = torch.arange(256.0) / 255                                   # every value an 8-bit pixel can take
    d = DiscretisedLogistic(loc[:, None], log_scale[:, None], event_ndim=0)
    total = d.log_prob(levels[None, :]).exp().sum(1)
    torch.testing.assert_close(total, torch.ones(5), atol=1e-4, rtol=0)


def test_the_discretised_logistic_is_the_logistic_mass_of_each_bin():
    from vaekit.models.distributions import DiscretisedLogistic

    torch.manual_seed(0)
    loc, log_scale = torch.rand(200), torch.empty(200).uniform_(-4, -1)
    x = torch.randint(1, 255, (200,)).float() / 255                     # inner bins
    d = DiscretisedLogistic(loc, log_scale, event_ndim=0)
    ref = _logistic(loc.double(), log_scale.double().exp())
    half = 0.5 / 255
    expected = (ref.cdf(x.double() + half) - ref.cdf(x.double() - half)).log()
    held = expected > -15       # below, the difference of two cdfs near 0 or 1 loses its digits even in float64
    assert held.sum() > 100
    torch.testing.assert_close(d.log_prob(x).double()[held], expected[held], atol=1e-3, rtol=1e-3)
    # the far tails, |x - loc| >> scale: sigma(a) - sigma(a - w) = e^a (1 - e^-w) to within e^a (mirrored above loc)
    scale = log_scale.double().exp()
    a, w = (half - (x.double() - loc.double()).abs()) / scale, 2 * half / scale
    far = ~held & (a < -30)
    assert far.any()
    torch.testing.assert_close(d.log_prob(x).double()[far], (a + torch.log(-torch.expm1(-w)))[far], atol=1e-3, rtol=1e-4)
    s = DiscretisedLogistic(loc, log_scale, event_ndim=0).sample()
    assert torch.equal(s, (s * 255).round() / 255) and s.min() >= 0 and s.max() <= 1


def test_bernoulli_keeps_its_gradient_out_of_float32_subnormals():
    """A decoder sure of a black pixel drives its logit far below -87, where sigmoid(l), the gradient,
    is subnormal and every CPU multiply through the backward pass is slow; |l| is held at 30."""
    logits = torch.tensor([[-200.0, -40.0, 0.5, 40.0, 200.0]], requires_grad=True)
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    lp = Bernoulli(logits).log_prob(x)
    exact = TorchBernoulli(logits=logits.detach().double()).log_prob(x.double()).sum(-1)
    assert abs(lp.item() - exact.item()) < 1e-6          # float32 rounding; the clamp itself costs < 1e-13
    lp.sum().backward()
    g = logits.grad.abs()
    assert ((g == 0) | (g > torch.finfo(torch.float32).tiny * 1e20)).all()
