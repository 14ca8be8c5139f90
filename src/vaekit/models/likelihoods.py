"""Likelihood heads: the decoder's raw output (..., D) -> the distribution p(x|z).

A head says how many outputs per data feature it needs, so the decoder is sized from it.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ..config.schema import ModelConfig, unknown
from .distributions import Bernoulli, DiagonalGaussian, DiscretisedLogistic

MIN_LOGVAR = math.log(1e-2**2)  # floor for learned variances: a pixel that is always 0 would drive sigma -> 0


class BernoulliHead(nn.Module):
    """Bernoulli(logits): binary or grey images in [0, 1] (cross-entropy reconstruction)."""

    params_per_feature = 1
    support = (0.0, 1.0)  # the data it can model; training checks the data lie inside

    def __init__(self, cfg):
        super().__init__()
        self.shape = tuple(cfg.input_shape)

    def forward(self, out: torch.Tensor) -> Bernoulli:
        return Bernoulli(out.unflatten(-1, self.shape), event_ndim=len(self.shape))


class GaussianHead(nn.Module):
    """N(mean, diag(sigma^2)): sigma is --obs-std (ModelConfig.obs_std) unless learned per feature."""

    params_per_feature = 1
    support = None        # any real data
    reads = ("obs_std",)

    def __init__(self, cfg, learned: bool = False):
        super().__init__()
        self.shape, self.learned = tuple(cfg.input_shape), learned
        init = torch.full(self.shape, 2 * math.log(cfg.obs_std))
        if learned:
            self.logvar = nn.Parameter(init)
        else:
            self.register_buffer("logvar", init)

    def forward(self, out: torch.Tensor) -> DiagonalGaussian:
        logvar = self.logvar.clamp(min=MIN_LOGVAR) if self.learned else self.logvar
        return DiagonalGaussian(out.unflatten(-1, self.shape), logvar, event_ndim=len(self.shape))


class DiscretisedLogisticHead(nn.Module):
    """Discretised logistic per pixel for 8-bit images (256 levels in [0, 1]); location and log-scale
    both come from the decoder, so bits/dim is a true likelihood."""

    params_per_feature = 2
    support = (0.0, 1.0)
    levels = 256          # training checks the data sit on the 256 levels k/255

    def __init__(self, cfg):
        super().__init__()
        self.shape = tuple(cfg.input_shape)

    def forward(self, out: torch.Tensor) -> DiscretisedLogistic:
        params = out.unflatten(-1, (2, *self.shape))
        loc, log_scale = params.select(-1 - len(self.shape), 0), params.select(-1 - len(self.shape), 1)
        return DiscretisedLogistic(loc + 0.5, log_scale.clamp(min=MIN_LOG_SCALE), event_ndim=len(self.shape),
                                   levels=self.levels)


MIN_LOG_SCALE = -7.0  # as PixelCNN++: sharper than a bin adds nothing


LIKELIHOODS = {
    "bernoulli": BernoulliHead,
    "gaussian": GaussianHead,
    "gaussian-learned": partial(GaussianHead, learned=True),
    "discretised-logistic": DiscretisedLogisticHead,
}

DEFAULT = "bernoulli"   # ModelConfig.likelihood None with no data to choose from (vaekit.training.resolve chooses from the data)


def get_likelihood(name: str | None):
    try:
        return LIKELIHOODS[name or DEFAULT]
    except KeyError:
        raise unknown(ModelConfig, "likelihood", name, LIKELIHOODS) from None
