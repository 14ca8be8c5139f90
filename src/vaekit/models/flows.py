"""Inverse autoregressive flow (Kingma et al. 2016): a richer q(z|x) than a diagonal Gaussian.

z_0 = mu + sigma * eps is pushed through T invertible steps. Step t computes, with an autoregressive
network (MADE, Germain et al. 2015) of the previous z and a context h from the encoder,

    [m, s] = AR(z, h),  sigma_t = sigmoid(s),  z <- sigma_t * z + (1 - sigma_t) * m     (Kingma et al. 2016, sec. 4)

so dz_i'/dz_j = 0 for j > i: the Jacobian is triangular and log |det| = sum_i log sigma_t,i. The density at
the sample is the change of variables,

    log q(z_T|x) = log N(z_0; mu, sigma^2) - sum_t sum_i log sigma_t,i,

known exactly at the flow's own samples (computing it at an arbitrary z would invert T sequential passes),
which is all the ELBO, the IWAE bound and the importance-sampled log p(x) use. The order of the latent
dimensions is reversed between steps, so each dimension is conditioned on the others in some step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .distributions import DiagonalGaussian

GATE_BIAS = 2.0   # s starts near +2: sigma = sigmoid(2) = 0.88, each step starts close to the identity


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in): the connections MADE allows."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float(), persistent=False)   # a function of the sizes: rebuilt, not saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask.to(self.weight.dtype), self.bias)


def made_masks(dim: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MADE's masks for inputs 1..dim, `hidden` units and 2 * dim outputs (m, then s): output i sees only inputs < i.

    Hidden unit k has degree 1 + k mod (dim - 1) and sees inputs of degree <= its own; output of degree i sees
    hidden units of degree < i (Germain et al. 2015, eq. 12-13). With dim = 1 the outputs see no input at all."""
    d_in = torch.arange(1, dim + 1)
    d_hidden = torch.arange(hidden) % max(dim - 1, 1) + 1
    d_out = d_in.repeat(2)
    return d_hidden[:, None] >= d_in[None, :], d_out[:, None] > d_hidden[None, :]   # (hidden, dim), (2 dim, hidden)


class IAFStep(nn.Module):
    """One inverse autoregressive flow step: z -> sigmoid(s) * z + (1 - sigmoid(s)) * m, [m, s] = MADE(z, h)."""

    def __init__(self, dim: int, hidden: int, context: int):
        super().__init__()
        to_hidden, to_out = made_masks(dim, hidden)
        self.inputs, self.context = MaskedLinear(to_hidden), nn.Linear(context, hidden, bias=False)
        self.out = MaskedLinear(to_out)
        with torch.no_grad():   # small m and s at the start: the step is near z -> 0.88 z
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            self.out.bias[dim:] = GATE_BIAS

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (..., D), h (B, C) broadcast against z's leading dims -> (new z (..., D), log |det dz'/dz| (...))."""
        wide = torch.promote_types(z.dtype, torch.float32)   # the gate and log |det| in float32 under bf16 autocast
        m, s = self.out(F.elu(self.inputs(z) + self.context(h))).to(wide).chunk(2, dim=-1)
        log_gate = F.logsigmoid(s)
        gate = log_gate.exp()
        return gate * z.to(wide) + (1 - gate) * m, log_gate.sum(-1)


class InverseAutoregressiveFlow(nn.Module):
    """T IAF steps with the latent order reversed between them."""

    def __init__(self, dim: int, steps: int, hidden: int, context: int):
        super().__init__()
        self.steps = nn.ModuleList(IAFStep(dim, hidden, context) for _ in range(steps))

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_0 (..., D) -> (z_T, sum over steps of log |det|, (...))."""
        if not torch.is_autocast_enabled(z.device.type):   # e.g. bf16 codes from an autocast encoder, used after it
            dtype = self.steps[0].out.weight.dtype if len(self.steps) else z.dtype
            z, h = z.to(dtype), h.to(dtype)
        log_det = torch.zeros(z.shape[:-1], device=z.device, dtype=torch.promote_types(z.dtype, torch.float32))
        for t, step in enumerate(self.steps):
            if t:
                z = z.flip(-1)
            z, step_log_det = step(z, h)
            log_det = log_det + step_log_det
        return z, log_det


class FlowPosterior:
    """q(z|x): a diagonal Gaussian base pushed through a flow with the encoder's context h; samples come with
    log q(z|x) at them (the change of variables), and the mode is the flow applied to the base's mean."""

    exported = ("mu", "logvar", "context", "mode")

    @property
    def mu(self) -> torch.Tensor:
        return self.base.mu

    @property
    def logvar(self) -> torch.Tensor:
        return self.base.logvar

    def __init__(self, base: DiagonalGaussian, flow: InverseAutoregressiveFlow, context: torch.Tensor):
        self.base, self.flow, self.context = base, flow, context

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return self.base.noise_shape

    def reparameterise_with_log_prob(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z0 = self.base.reparameterise(eps)
        z, log_det = self.flow(z0, self.context)
        return z, self.base.log_prob(z0) - log_det

    def rsample_with_log_prob(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reparameterise_with_log_prob(self.base.noise(n))

    def rsample(self, n: int | None = None, temperature: float = 1.0) -> torch.Tensor:
        return self.flow(self.base.rsample(n, temperature), self.context)[0]

    def sample(self, n: int | None = None, temperature: float = 1.0) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(n, temperature)

    @property
    def mode(self) -> torch.Tensor:
        """The flow applied to the base's mean: the code that figures plot for x."""
        return self.flow(self.base.mu, self.context)[0]

    mean = mode

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise ConfigError("an inverse autoregressive flow's q(z|x) is known at its own samples only "
                          "(rsample_with_log_prob); this use needs --posterior gaussian")
