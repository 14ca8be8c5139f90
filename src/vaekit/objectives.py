"""Training objectives. Each returns per-example terms {'loss', 'recon', 'kl'} in nats;
the caller reduces them once.

loss(model, x, cfg, epoch) with x (B, C, H, W), cfg a TrainConfig and epoch the training
progress in epochs (fractional; math.inf, the default, means the end of every schedule: what
evaluation uses).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .distributions import DiagonalGaussian
from .errors import ConfigError
from .vq import Quantised


def elbo(model, x: torch.Tensor, cfg, epoch: float = math.inf) -> dict[str, torch.Tensor]:
    """Negative ELBO: -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)); beta != 1 is the beta-VAE
    (Higgins et al. 2017), and cfg.kl_warmup_epochs ramps the KL weight up from 0 (Bowman et al. 2016).

    E_q is estimated with L = cfg.mc_samples reparameterised samples (Kingma & Welling
    2014, eq. 7); the KL is closed form (cfg.kl == 'analytic') or the Monte Carlo
    estimate log q(z|x) - log p(z) on the same samples.
    """
    q = posterior(model, x)
    log_px_z, log_pz, log_qz = log_weights(model, q, x, cfg.mc_samples)
    recon = -log_px_z.mean(0)
    kl = q.kl() if cfg.kl == "analytic" else (log_qz - log_pz).mean(0)
    return {"loss": recon + kl_weight(cfg, epoch) * kl, "recon": recon, "kl": kl}


def kl_weight(cfg, epoch: float) -> float:
    """beta, scaled by min(1, epoch / kl_warmup_epochs) during the warm-up."""
    if cfg.kl_warmup_epochs <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, epoch / cfg.kl_warmup_epochs)


def capacity(model, x: torch.Tensor, cfg, epoch: float = math.inf) -> dict[str, torch.Tensor]:
    """Controlled-capacity beta-VAE (Burgess et al. 2018, eq. 8): -E_q[log p(x|z)] + gamma * |KL - C|,
    C rising linearly from 0 to cfg.capacity nats over cfg.capacity_epochs."""
    terms = elbo(model, x, dataclasses.replace(cfg, beta=0.0, kl_warmup_epochs=0.0), epoch)
    c = cfg.capacity * min(1.0, epoch / cfg.capacity_epochs) if cfg.capacity_epochs > 0 else cfg.capacity
    return {**terms, "loss": terms["recon"] + cfg.gamma * (terms["kl"] - c).abs()}


def iwae(model, x: torch.Tensor, cfg, epoch: float = math.inf) -> dict[str, torch.Tensor]:
    """Negative importance-weighted bound (Burda et al. 2016, eq. 8) with k = cfg.mc_samples:

        -log (1/k) sum_i p(x, z_i) / q(z_i|x),  z_i ~ q(z|x).

    k = 1 is the ELBO with a Monte Carlo KL. 'recon' and 'kl' are the sample averages of
    -log p(x|z) and log q(z|x) - log p(z), reported for comparison; loss <= recon + kl.
    """
    if cfg.beta != 1.0:
        raise ConfigError(f"loss 'iwae' is a bound on log p(x) and takes no beta (got {cfg.beta}); drop --beta")
    log_px_z, log_pz, log_qz = log_weights(model, posterior(model, x), x, cfg.mc_samples)
    bound = torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(cfg.mc_samples)
    return {"loss": -bound, "recon": -log_px_z.mean(0), "kl": (log_qz - log_pz).mean(0)}


def posterior(model, x: torch.Tensor) -> DiagonalGaussian:
    """q(z|x), insisting that it is a distribution (not an auto-encoder's point code)."""
    q = model.encode(x)
    if not isinstance(q, DiagonalGaussian):
        raise ConfigError(f"this loss needs a stochastic encoder; model {model.config.model!r} has none (use --model vae)")
    return q


def log_weights(model, q: DiagonalGaussian, x: torch.Tensor, k: int):
    """For k samples z ~ q: log p(x|z), log p(z), log q(z|x), each (k, B)."""
    return log_weights_at(model, q, x, q.rsample(k))                # z (k, B, D)


def log_weights_at(model, q: DiagonalGaussian, x: torch.Tensor, z: torch.Tensor):
    """log p(x|z), log p(z), log q(z|x) at given samples z (k, B, D): each (k, B)."""
    return model.decode(z).log_prob(x), model.prior(x.device).log_prob(z), q.log_prob(z)


def ae_loss(model, x: torch.Tensor, cfg, epoch: float = math.inf) -> dict[str, torch.Tensor]:
    """Auto-encoder: -log p(x | z = mode of the code) (BCE or squared error), no KL."""
    recon = -model.decode(model.encode(x).mode).log_prob(x)
    return {"loss": recon, "recon": recon, "kl": torch.zeros_like(recon)}


def vq(model, x: torch.Tensor, cfg, epoch: float = math.inf) -> dict[str, torch.Tensor]:
    """VQ-VAE (van den Oord et al. 2017, eq. 3): -log p(x|z_q) + ||sg(z_e) - e||^2 + commitment *
    ||z_e - sg(e)||^2, summed over the codes (with an EMA codebook the middle term is 0). 'kl' is
    KL(q || uniform prior over codes) = (number of codes) * log K, a constant since q is one-hot."""
    q = model.encode(x)
    if not isinstance(q, Quantised):
        raise ConfigError(f"loss 'vq' needs a codebook; model {model.config.model!r} has none (use --model vqvae)")
    recon = -model.decode(q.mode).log_prob(x)
    kl = torch.full_like(recon, q.indices.shape[-1] * math.log(model.config.codebook_size))
    return {"loss": recon + q.codebook_loss + cfg.commitment * q.commitment_loss, "recon": recon, "kl": kl}


LOSSES = {
    "elbo": elbo,
    "iwae": iwae,
    "capacity": capacity,
    "ae": ae_loss,
    "vq": vq,
}


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"loss {name!r} is unknown; choose one of {', '.join(LOSSES)}") from None
