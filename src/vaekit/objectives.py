"""Training objectives. Each returns per-example terms {'loss', 'recon', 'kl'} in nats;
the caller reduces them once.

loss(model, x, cfg) with x (B, C, H, W) and cfg a TrainConfig.
"""

from __future__ import annotations

import torch

from .distributions import DiagonalGaussian
from .errors import ConfigError


def elbo(model, x: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """Negative ELBO: -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)).

    E_q is estimated with L = cfg.mc_samples reparameterised samples (Kingma & Welling
    2014, eq. 7); the KL is closed form (cfg.kl == 'analytic') or the Monte Carlo
    estimate log q(z|x) - log p(z) on the same samples.
    """
    q = model.encode(x)
    if not isinstance(q, DiagonalGaussian):
        raise ConfigError(f"loss 'elbo' needs a stochastic encoder; model {model.config.model!r} has none (use --model vae)")
    z = q.rsample(cfg.mc_samples)                                # (L, B, D)
    log_px_z = model.decode(z).log_prob(x).mean(0)               # (B,)
    if cfg.kl == "analytic":
        kl = q.kl()
    else:
        kl = (q.log_prob(z) - model.prior(x.device).log_prob(z)).mean(0)
    return {"loss": -log_px_z + cfg.beta * kl, "recon": -log_px_z, "kl": kl}


def ae_loss(model, x: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """Auto-encoder: -log p(x | z = mode of the code) (BCE or squared error), no KL."""
    recon = -model.decode(model.encode(x).mode).log_prob(x)
    return {"loss": recon, "recon": recon, "kl": torch.zeros_like(recon)}


LOSSES = {
    "elbo": elbo,
    "ae": ae_loss,
}


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"loss {name!r} is unknown; choose one of {', '.join(LOSSES)}") from None
