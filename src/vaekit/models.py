"""Latent-variable models: small nn.Modules whose encode/decode return distributions.

A variant that differs only in its objective (beta-VAE, IWAE, ...) is a loss in
vaekit.objectives, not a new class here.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .distributions import DiagonalGaussian, PointMass
from .errors import ConfigError
from .likelihoods import LIKELIHOODS
from .nets import ARCHITECTURES


class LatentModel(nn.Module):
    """Shared body: an encoder x -> (encoder_outputs * latent_dim) and a decoder z -> p(x|z), both built by
    the config's architecture (vaekit.nets.ARCHITECTURES)."""

    encoder_outputs = 1  # numbers per latent dimension the encoder emits
    default_loss = "ae"

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood {config.likelihood!r} is unknown; choose one of {', '.join(LIKELIHOODS)}")
        if config.arch not in ARCHITECTURES:
            raise ConfigError(f"architecture {config.arch!r} is unknown; choose one of {', '.join(ARCHITECTURES)}")
        self.config = config
        self.likelihood = LIKELIHOODS[config.likelihood](config)
        self.encoder, self.decoder = ARCHITECTURES[config.arch](
            config, self.encoder_outputs * config.latent_dim, self.likelihood.params_per_feature)

    def prior(self, device=None) -> DiagonalGaussian:
        """p(z) = N(0, I)."""
        return DiagonalGaussian.standard((self.config.latent_dim,), device=device)

    def decode(self, z: torch.Tensor):
        """z (..., D) -> p(x|z) over (..., C, H, W)."""
        return self.likelihood(self.decoder(z))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def generate(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Decode z ~ N(0, temperature^2 I): (n, C, H, W), the mean of p(x|z) in [0, 1]."""
        z = self.prior(self.device).sample(n, temperature)
        return self.decode(z).mean.clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mode of each x: (B, C, H, W) -> (B, C, H, W)."""
        return self.decode(self.encode(x).mode).mean.clamp(0, 1)


class AutoEncoder(LatentModel):
    """Deterministic baseline: z = f(x), trained on reconstruction alone."""

    def encode(self, x: torch.Tensor) -> PointMass:
        return PointMass(self.encoder(x))


class VAE(LatentModel):
    """q(z|x) = N(mu(x), diag(exp(logvar(x)))), p(z) = N(0, I) (Kingma & Welling 2014)."""

    encoder_outputs = 2
    default_loss = "elbo"

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)  # (B, D) each
        return DiagonalGaussian(mu, logvar)


MODELS = {
    "ae": AutoEncoder,
    "vae": VAE,
}


def build_model(config: ModelConfig) -> LatentModel:
    try:
        return MODELS[config.model](config)
    except KeyError:
        raise ConfigError(f"model {config.model!r} is unknown; choose one of {', '.join(MODELS)}") from None
