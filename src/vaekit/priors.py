"""Priors p(z) over a continuous latent (the PRIORS registry; ModelConfig.prior picks one).

A prior is an nn.Module (so a learned prior's parameters train and are saved with the model)
with `log_prob(z)` (one value per example and sample), `sample(n, temperature)`, a `name` that
figures and captions print, and `kl(q)`: KL(q(z|x) || p(z)) in closed form, or None where there
is none (the losses then estimate it by Monte Carlo, log q(z|x) - log p(z) on the same samples).
A new prior is one class here and one line in PRIORS.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig, field_ref
from .distributions import DiagonalGaussian
from .errors import ConfigError


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

    def kl_per_dim(self, q) -> torch.Tensor | None:
        """(B, D): the KL of each latent dimension, which figures use to order dimensions by use."""
        return DiagonalGaussian(q.mu, q.logvar, event_ndim=0).kl() if isinstance(q, DiagonalGaussian) else None


PRIORS = {
    "standard": StandardNormal,
}


def build_prior(config: ModelConfig) -> nn.Module:
    try:
        cls = PRIORS[config.prior]
    except KeyError:
        raise ConfigError(f"prior {config.prior!r} is unknown ({field_ref(ModelConfig, 'prior')}); "
                          f"choose one of {', '.join(PRIORS)}") from None
    return cls(config)
