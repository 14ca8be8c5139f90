"""Training objectives (the LOSSES registry). Each returns per-example terms {'loss', 'recon', 'kl'} in
nats; the caller reduces them once.

loss(model, x, ctx) with x (B, C, H, W) and ctx a LossContext: the TrainConfig, the training
progress in epochs and the training set's size. A loss names the TrainConfig fields it reads
(`@reads`), so an option that no chosen component reads is refused instead of silently ignored.
A new loss, even one that needs N (e.g. the beta-TC decomposition), is a function and a registry line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..config.schema import TrainConfig, field_ref, unknown
from ..errors import ConfigError
from .vq import Quantised


@dataclass(frozen=True)
class LossContext:
    """What a loss may need besides the model and the batch."""

    train: TrainConfig
    epoch: float = math.inf     # training progress in epochs (fractional); inf: the end of every schedule (evaluation)
    dataset_size: int = 0       # N, the examples in the training set (0: unknown)


def reads(*fields: str):
    """Mark the TrainConfig fields a loss reads."""
    def mark(fn):
        fn.reads = fields
        return fn
    return mark


@reads("beta", "kl_warmup_epochs", "mc_samples", "kl")
def elbo(model, x: torch.Tensor, ctx: LossContext) -> dict[str, torch.Tensor]:
    """Negative ELBO: -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)); beta != 1 is the beta-VAE
    (Higgins et al. 2017), and kl_warmup_epochs ramps the KL weight up from 0 (Bowman et al. 2016).

    E_q is estimated with L = mc_samples reparameterised samples (Kingma & Welling 2014, eq. 7);
    the KL in closed form where the prior has one, else log q(z|x) - log p(z) on the same samples.
    """
    recon, kl = recon_and_kl(model, x, ctx.train)
    return {"loss": recon + kl_weight(ctx.train, ctx.epoch) * kl, "recon": recon, "kl": kl}


def recon_and_kl(model, x: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """-E_q[log p(x|z)] over mc_samples samples and KL(q(z|x) || p(z)), each (B,). With the closed-form KL, log q(z|x)
    and log p(z) at the samples are not computed (the same samples: the noise is drawn the same way)."""
    q = posterior(model, x)
    closed = closed_form_kl(model, q, cfg.kl)
    if closed is not None:
        return -model.decode(q.rsample(cfg.mc_samples)).log_prob(x).mean(0), closed
    log_px_z, log_pz, log_qz = log_weights(model, q, x, cfg.mc_samples)
    return -log_px_z.mean(0), (log_qz - log_pz).mean(0)   # the Monte Carlo KL over the same samples


def closed_form_kl(model, q, mode: str) -> torch.Tensor | None:
    """KL(q(z|x) || p(z)), (B,), in the prior's closed form (mode analytic or auto, where it has one); None where the
    KL is to be the Monte Carlo mean of log q(z|x) - log p(z) (mode mc, or auto without a closed form)."""
    if mode == "mc":
        return None
    closed = model.prior().kl(q)
    if closed is None and mode == "analytic":
        raise ConfigError(f"the prior {model.prior().name} has no closed-form KL with this posterior "
                          f"({field_ref(TrainConfig, 'kl')}); use --kl auto or mc")
    return closed


def kl_weight(cfg: TrainConfig, epoch: float | torch.Tensor) -> float | torch.Tensor:
    """beta, scaled by min(1, epoch / kl_warmup_epochs) during the warm-up."""
    if cfg.kl_warmup_epochs <= 0:
        return cfg.beta
    return cfg.beta * ramp(epoch, cfg.kl_warmup_epochs)


def ramp(epoch: float | torch.Tensor, epochs: float) -> float | torch.Tensor:
    """min(1, epoch / epochs). The compiled training step passes the epoch as a 0-d tensor: a Python float would
    be a constant of the graph, and each step's new value a recompilation."""
    if isinstance(epoch, torch.Tensor):
        return torch.clamp(epoch / epochs, max=1.0)
    return min(1.0, epoch / epochs)


@reads("capacity", "capacity_epochs", "gamma", "mc_samples", "kl")
def capacity(model, x: torch.Tensor, ctx: LossContext) -> dict[str, torch.Tensor]:
    """Controlled-capacity beta-VAE (Burgess et al. 2018, eq. 8): -E_q[log p(x|z)] + gamma * |KL - C|,
    C rising linearly from 0 to capacity nats over capacity_epochs."""
    cfg = ctx.train
    recon, kl = recon_and_kl(model, x, cfg)
    c = cfg.capacity * ramp(ctx.epoch, cfg.capacity_epochs) if cfg.capacity_epochs > 0 else cfg.capacity
    return {"loss": recon + cfg.gamma * (kl - c).abs(), "recon": recon, "kl": kl}


@reads("mc_samples")
def iwae(model, x: torch.Tensor, ctx: LossContext) -> dict[str, torch.Tensor]:
    """Negative importance-weighted bound (Burda et al. 2016, eq. 8) with k = mc_samples:

        -log (1/k) sum_i p(x, z_i) / q(z_i|x),  z_i ~ q(z|x).

    k = 1 is the ELBO with a Monte Carlo KL. 'recon' and 'kl' are the sample averages of
    -log p(x|z) and log q(z|x) - log p(z), reported for comparison; loss <= recon + kl.
    """
    k = ctx.train.mc_samples
    log_px_z, log_pz, log_qz = log_weights(model, posterior(model, x), x, k)
    bound = torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(k)
    return {"loss": -bound, "recon": -log_px_z.mean(0), "kl": (log_qz - log_pz).mean(0)}


def posterior(model, x: torch.Tensor):
    """q(z|x), insisting that it is a distribution (not an auto-encoder's point code): a DiagonalGaussian or another
    of vaekit.models.posteriors."""
    q = model.encode(x)
    if not hasattr(q, "rsample_with_log_prob"):
        raise ConfigError(f"this loss needs a stochastic encoder; model {model.config.model!r} has none (use --model vae)")
    return q


def log_weights(model, q, x: torch.Tensor, k: int):
    """For k samples z ~ q: log p(x|z), log p(z), log q(z|x), each (k, B)."""
    return log_weights_at(model, x, *q.rsample_with_log_prob(k))    # z (k, B, D)


def log_weights_at(model, x: torch.Tensor, z: torch.Tensor, log_qz: torch.Tensor):
    """log p(x|z), log p(z), log q(z|x) at samples z (k, B, D) of q with their log q(z|x): each (k, B)."""
    return model.decode(z).log_prob(x), model.prior().log_prob(z), log_qz


@reads()
def ae_loss(model, x: torch.Tensor, ctx: LossContext) -> dict[str, torch.Tensor]:
    """Auto-encoder: -log p(x | z = mode of the code) (BCE or squared error), no KL."""
    recon = -model.decode(model.encode(x).mode).log_prob(x)
    return {"loss": recon, "recon": recon, "kl": torch.zeros_like(recon)}


@reads("commitment")
def vq(model, x: torch.Tensor, ctx: LossContext) -> dict[str, torch.Tensor]:
    """VQ-VAE (van den Oord et al. 2017, eq. 3): -log p(x|z_q) + ||sg(z_e) - e||^2 + commitment *
    ||z_e - sg(e)||^2, summed over the codes (with an EMA codebook the middle term is 0). 'kl' is
    KL(q || uniform prior over codes) = (number of codes) * log K, a constant since q is one-hot."""
    q = model.encode(x)
    if not isinstance(q, Quantised):
        raise ConfigError(f"loss 'vq' needs a codebook; model {model.config.model!r} has none (use --model vqvae)")
    recon = -model.decode(q.mode).log_prob(x)
    kl = torch.full_like(recon, q.indices.shape[-1] * math.log(model.config.codebook_size))
    return {"loss": recon + q.codebook_loss + ctx.train.commitment * q.commitment_loss, "recon": recon, "kl": kl}


LOSSES = {
    "elbo": elbo,
    "iwae": iwae,
    "capacity": capacity,
    "ae": ae_loss,
    "vq": vq,
}


def get_loss(name: str | None, model=None):
    """LOSSES[name]; None: the model's own loss (model.default_loss)."""
    if name is None and model is not None:
        name = model.default_loss
    try:
        return LOSSES[name]
    except KeyError:
        raise unknown(TrainConfig, "loss", name, LOSSES) from None


def with_epoch(ctx: LossContext, epoch: float) -> LossContext:
    return dataclasses.replace(ctx, epoch=epoch)
