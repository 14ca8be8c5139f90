"""Likelihood heads: the decoder's raw output (..., D) -> the distribution p(x|z).

A head says how many outputs per data feature it needs, so the decoder is sized from it.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .distributions import Bernoulli, DiagonalGaussian

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
    """N(mean, diag(sigma^2)): sigma fixed by the config (obs_std), or learned per feature."""

    params_per_feature = 1
    support = None        # any real data

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


LIKELIHOODS = {
    "bernoulli": BernoulliHead,
    "gaussian": GaussianHead,
    "gaussian-learned": partial(GaussianHead, learned=True),
}
