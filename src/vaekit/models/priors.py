"""Priors p(z) over a continuous latent (the PRIORS registry; ModelConfig.prior picks one).

A prior is an nn.Module (so a learned prior's parameters train and are saved with the model)
with `log_prob(z)` (one value per example and sample), `sample(n, temperature)`, a `name` that
figures and captions print, and `kl(q)`: KL(q(z|x) || p(z)) in closed form, or None where there
is none (the losses then estimate it by Monte Carlo, log q(z|x) - log p(z) on the same samples).
A prior that needs the model (the VampPrior reads the encoder) says `needs_model = True` and is built with
it; a learned prior (`learned = True`) trains through the KL term, so it needs a model that has one.
A new prior is one class here and one line in PRIORS.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.schema import ModelConfig, field_ref
from ..errors import ConfigError
from .distributions import DiagonalGaussian, mixture_log_prob


class StandardNormal(nn.Module):
    """N(0, I): the VAE's prior (Kingma & Welling 2014); KL(q || p) in closed form for a diagonal Gaussian q."""

    name = "N(0, I)"
    closed_form_kl = True       # kl(q) is exact for the posteriors vaekit builds
    unit_sd = 1.0               # figures draw circles of 1 and 2 sd around the origin; None: not isotropic

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.latent_dim = config.latent_dim
        # no state to save: an empty non-persistent buffer only tells which device the prior lives on
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def distribution(self) -> DiagonalGaussian:
        return DiagonalGaussian.standard((self.latent_dim,), device=self.anchor.device)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.distribution().log_prob(z)

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """(n, latent_dim) draws of N(0, temperature^2 I)."""
        return self.distribution().sample(n, temperature)

    def kl(self, q) -> torch.Tensor | None:
        """KL(q || N(0, I)) = 0.5 sum(mu^2 + sigma^2 - log sigma^2 - 1) (Kingma & Welling 2014, app. B)."""
        return q.kl() if isinstance(q, DiagonalGaussian) else None

    def description_for_export(self) -> dict:
        return {"kind": "standard_normal", "name": self.name, "dim": self.latent_dim,
                "sample": "z = randn(dim) per example"}

    def kl_per_dim(self, q) -> torch.Tensor | None:
        """(B, D): the KL of each latent dimension, which figures use to order dimensions by use."""
        return DiagonalGaussian(q.mu, q.logvar, event_ndim=0).kl() if isinstance(q, DiagonalGaussian) else None


class GaussianMixture(nn.Module):
    """Base of the mixture priors: p(z) = sum_k w_k N(z; mu_k, diag(sigma_k^2)); no closed-form KL (Monte Carlo)."""

    closed_form_kl = False
    unit_sd = None              # not isotropic: figures draw no circles
    learned = True
    reads = ("prior_components",)

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mu (K, D), logvar (K, D), log w (K,)."""
        raise NotImplementedError

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return mixture_log_prob(z, *self.components())

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """(n, latent_dim): a component k ~ w, then N(mu_k, temperature^2 sigma_k^2)."""
        with torch.no_grad():
            mu, logvar, log_w = (t.float() for t in self.components())
            k = torch.multinomial(log_w.softmax(0), n, replacement=True)
            return mu[k] + temperature * torch.exp(0.5 * logvar[k]) * torch.randn(n, mu.shape[1], device=mu.device)

    def kl(self, q) -> None:
        return None

    def kl_per_dim(self, q) -> None:
        return None

    def description_for_export(self) -> dict:
        with torch.no_grad():
            mu, logvar, log_w = (t.float() for t in self.components())
        return {"kind": "gaussian_mixture", "name": self.name, "dim": mu.shape[1],
                "sample": "k ~ Categorical(weights), then z = mu[k] + exp(0.5 * logvar[k]) * randn(dim)",
                "weights": log_w.exp().tolist(), "mu": mu.tolist(), "logvar": logvar.tolist()}


class MixtureOfGaussians(GaussianMixture):
    """A mixture of K diagonal Gaussians with learned weights, means and variances (--prior-components K, default 10)."""

    default_components = 10

    def __init__(self, config: ModelConfig):
        super().__init__()
        k, d = config.prior_components or self.default_components, config.latent_dim
        self.name = f"a mixture of {k} Gaussians"
        self.logits = nn.Parameter(torch.zeros(k))
        self.mu = nn.Parameter(torch.randn(k, d))     # spread like N(0, I)'s draws, so the components start apart
        self.logvar = nn.Parameter(torch.zeros(k, d))

    def components(self):
        return self.mu, self.logvar, self.logits.log_softmax(0)


class VampPrior(GaussianMixture):
    """The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z|u_k), the posterior at K learned pseudo-inputs
    u_k (--prior-components K, default 500); with a flow posterior, its Gaussian part."""

    default_components = 500
    needs_model = True

    def __init__(self, config: ModelConfig, model):
        super().__init__()
        if model.conditional or not hasattr(model, "gaussian_posterior"):
            raise ConfigError(f"the VampPrior mixes q(z|u) at pseudo-inputs u, which model {config.model!r} cannot give "
                              "(it needs an unconditional model with a posterior): use --prior mog")
        k = config.prior_components or self.default_components
        self.name = f"VampPrior, {k} pseudo-inputs"
        # pseudo-inputs start as near-blank inputs and stay inside the likelihood's support (images: [0, 1])
        self.support = getattr(model.likelihood, "support", None)
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(k, *config.input_shape))
        # the model's method, not a sub-module: the encoder's weights are the model's, saved once
        self._posterior_at = model.gaussian_posterior

    def inputs(self) -> torch.Tensor:
        u = self.pseudo_inputs
        return u if self.support is None else u.clamp(*self.support)

    def components(self):
        q = self._posterior_at(self.inputs())
        k = q.mu.shape[0]
        return q.mu, q.logvar, torch.full((k,), -math.log(k), device=q.mu.device)


PRIORS = {
    "standard": StandardNormal,
    "mog": MixtureOfGaussians,
    "vamp": VampPrior,
}


def build_prior(config: ModelConfig, model=None) -> nn.Module:
    """The config's prior for `model` (the priors that read the model get it; learned ones need a KL to learn from)."""
    try:
        cls = PRIORS[config.prior]
    except KeyError:
        raise ConfigError(f"prior {config.prior!r} is unknown ({field_ref(ModelConfig, 'prior')}); "
                          f"choose one of {', '.join(PRIORS)}") from None
    if getattr(cls, "learned", False) and model is not None and not model.stochastic:
        raise ConfigError(f"the prior {config.prior!r} is learned through the KL term, and model {config.model!r} has "
                          "none: use --model vae, or --prior standard")
    return cls(config, model) if getattr(cls, "needs_model", False) else cls(config)
