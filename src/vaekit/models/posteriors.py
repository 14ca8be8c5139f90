"""Posteriors q(z|x) (the POSTERIORS registry; ModelConfig.posterior picks one).

A posterior is an nn.Module between the encoder and the losses: the encoder emits `outputs_per_dim` numbers
per latent dimension, and forward(out) turns them into a distribution q offering

    q.rsample_with_log_prob(n) / q.reparameterise_with_log_prob(eps) -> (z, log q(z|x)),
    q.noise_shape, q.mode, q.rsample(n, temperature),

which is all the ELBO, the IWAE bound, the importance-sampled log p(x) and the figures use. A closed-form KL
applies where q is a DiagonalGaussian; otherwise the losses estimate the KL by Monte Carlo on the same samples.
A new posterior is one class here and one line in POSTERIORS.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config.schema import ModelConfig, unknown
from .distributions import DiagonalGaussian
from .flows import FlowPosterior, InverseAutoregressiveFlow


class GaussianPosterior(nn.Module):
    """q(z|x) = N(mu(x), diag(sigma^2(x))), the VAE's posterior (Kingma & Welling 2014); closed-form KL with N(0, I)."""

    outputs_per_dim = 2   # mu, log sigma^2
    closed_form_kl = True   # a prior with a closed-form KL against a diagonal Gaussian gives it for this q

    def __init__(self, config: ModelConfig):
        super().__init__()

    def forward(self, out: torch.Tensor) -> DiagonalGaussian:
        mu, logvar = out.chunk(2, dim=-1)   # (B, D) each
        return DiagonalGaussian(mu, logvar)


class IAFPosterior(nn.Module):
    """The diagonal Gaussian followed by --flow-steps inverse autoregressive flow steps (Kingma et al. 2016) with a
    context from the encoder; log q(z|x) by the change of variables, the KL by Monte Carlo."""

    outputs_per_dim = 3   # mu, log sigma^2 and a context h of latent_dim numbers
    closed_form_kl = False  # no closed form for a flow's q: the KL is estimated by Monte Carlo
    reads = ("flow_steps", "flow_hidden")

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.latent_dim
        self.flow = InverseAutoregressiveFlow(d, config.flow_steps, config.flow_hidden, context=d)

    def forward(self, out: torch.Tensor) -> FlowPosterior:
        mu, logvar, h = out.chunk(3, dim=-1)
        return FlowPosterior(DiagonalGaussian(mu, logvar), self.flow, h)


POSTERIORS = {
    "gaussian": GaussianPosterior,
    "iaf": IAFPosterior,
}


def build_posterior(config: ModelConfig) -> nn.Module:
    if config.posterior not in POSTERIORS:
        raise unknown(ModelConfig, "posterior", config.posterior, POSTERIORS)
    return POSTERIORS[config.posterior](config)
