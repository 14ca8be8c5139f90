"""Two or more stochastic layers (Burda et al. 2016, sec. 5; their two-layer MNIST model):

    p(x, z_1, ..., z_L) = p(x|z_1) p(z_1|z_2) ... p(z_{L-1}|z_L) p(z_L)
    q(z_1, ..., z_L|x)  = q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})

with diagonal-Gaussian conditionals computed by small MLPs and p(z_L) from the prior registry. The losses and the
likelihood estimate see one latent vector z = [z_1, ..., z_L]: the posterior samples it with log q(z|x) (the sum
of the layers' terms), the prior's log_prob(z) is log p(z_L) + sum_l log p(z_l|z_{l+1}), and the decoder reads
z_1. So the ELBO, the IWAE bound and the k = 5,000 estimate apply unchanged, with the KL by Monte Carlo.
Figures show the top layer z_L: a top-layer code is decoded through the means of the layers below it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config.schema import ModelConfig
from .distributions import DiagonalGaussian, standard_normal
from .nets import mlp


class GaussianLayer(nn.Module):
    """A conditional N(mu(v), diag(exp(logvar(v)))) over `out` numbers from a vector of `inp`: an MLP through `hidden`."""

    def __init__(self, inp: int, hidden: tuple[int, ...], out: int, act: str):
        super().__init__()
        self.net = mlp([inp, *hidden, 2 * out], act)

    def forward(self, v: torch.Tensor) -> DiagonalGaussian:
        mu, logvar = self.net(v).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)


def layer_sizes(config: ModelConfig) -> list[int]:
    """[D_1, ..., D_L]: latent_dim (the layer the decoder reads), then the layers above it."""
    return [config.latent_dim, *config.upper_latent_dims]


class HierarchicalPosterior:
    """q(z|x) = q(z_1|x) prod_l q(z_{l+1}|z_l) over z = [z_1, ..., z_L]; one noise vector per example covers every
    layer, so sharded and sampled draws follow the same rules as a one-layer posterior."""

    exported = ("mu", "logvar", "mode")   # q(z_1|x)'s parameters, and the chain of means [z_1, ..., z_L]

    @property
    def mu(self) -> torch.Tensor:
        return self.first.mu

    @property
    def logvar(self) -> torch.Tensor:
        return self.first.logvar

    def __init__(self, first: DiagonalGaussian, up: nn.ModuleList, sizes: list[int]):
        self.first, self.up, self.sizes = first, up, sizes

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (*self.first.mu.shape[:-1], sum(self.sizes))

    def reparameterise_with_log_prob(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = eps.split(self.sizes, dim=-1)
        z = self.first.reparameterise(parts[0])
        zs, log_q = [z], self.first.log_prob(z)
        for layer, e in zip(self.up, parts[1:], strict=True):
            q = layer(z)
            z = q.reparameterise(e)
            zs.append(z)
            log_q = log_q + q.log_prob(z)
        return torch.cat(zs, dim=-1), log_q

    def noise(self, n: int | None = None) -> torch.Tensor:
        shape = self.noise_shape if n is None else (n, *self.noise_shape)
        return standard_normal(shape, 0 if n is None else 1, self.first.mu.device, self.first.mu.dtype)

    def rsample_with_log_prob(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reparameterise_with_log_prob(self.noise(n))

    def rsample(self, n: int | None = None, temperature: float = 1.0) -> torch.Tensor:
        return self.reparameterise_with_log_prob(temperature * self.noise(n))[0]

    def sample(self, n: int | None = None, temperature: float = 1.0) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(n, temperature)

    @property
    def mode(self) -> torch.Tensor:
        """Each layer's mean given the means below it: [z_1, ..., z_L]."""
        return self.reparameterise_with_log_prob(torch.zeros(self.noise_shape, device=self.first.mu.device))[0]

    mean = mode

    def top(self) -> DiagonalGaussian:
        """q(z_L | the means of the layers below): the Gaussian a VampPrior over z_L mixes."""
        q = self.first
        for layer in self.up:
            q = layer(q.mu)
        return q


class HierarchicalPrior(nn.Module):
    """p(z) = p(z_L) prod_l p(z_l|z_{l+1}) over z = [z_1, ..., z_L], p(z_L) from the prior registry."""

    closed_form_kl = False
    unit_sd = None

    def __init__(self, top: nn.Module, down: nn.ModuleList, sizes: list[int]):
        super().__init__()
        self.top, self.down, self.sizes = top, down, sizes   # down[l]: p(z_{l+1}|z_{l+2}) for l = 0..L-2
        self.name = f"{top.name} over the top of {len(sizes)} stochastic layers"

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        zs = z.split(self.sizes, dim=-1)
        log_p = self.top.log_prob(zs[-1])
        for layer, below, above in zip(self.down, zs[:-1], zs[1:], strict=True):
            log_p = log_p + layer(above).log_prob(below)
        return log_p

    def descend(self, top: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
        """z = [z_1, ..., z_L] from z_L, each layer below drawn from p(z_l|z_{l+1}) (temperature 0: its mean)."""
        zs = [top]
        for layer in reversed(self.down):
            p = layer(zs[0])
            zs.insert(0, p.reparameterise(temperature * torch.randn_like(p.mu)) if temperature else p.mu)
        return torch.cat(zs, dim=-1)

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        with torch.no_grad():
            return self.descend(self.top.sample(n, temperature), temperature)

    def kl(self, q) -> None:
        return None

    def kl_per_dim(self, q) -> None:
        return None


def build_hierarchy(model, config: ModelConfig, build_prior) -> tuple[nn.ModuleList, HierarchicalPrior]:
    """The inference layers q(z_{l+1}|z_l) and the prior p(z) of a model with layer_sizes(config)."""
    sizes, hidden, act = layer_sizes(config), tuple(config.upper_hidden_dims), config.activation
    up = nn.ModuleList(GaussianLayer(a, hidden, b, act) for a, b in zip(sizes[:-1], sizes[1:]))
    down = nn.ModuleList(GaussianLayer(b, hidden, a, act) for a, b in zip(sizes[:-1], sizes[1:]))
    top = build_prior(dataclasses.replace(config, latent_dim=sizes[-1]), model)
    return up, HierarchicalPrior(top, down, sizes)
