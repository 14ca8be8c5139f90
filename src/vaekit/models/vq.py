"""The VQ-VAE's discrete latent (van den Oord et al. 2017): a codebook of K vectors e_k in R^E,
nearest-neighbour quantisation with the straight-through gradient, the codebook and commitment
terms (or an exponential-moving-average codebook), and an autoregressive prior over the M code
indices of an example, fitted after training so that a VQ-VAE generates like every other model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import rows_of_all_processes, sum_over_processes


@dataclass
class Quantised:
    """The encoder's output for a batch: z_e (B, M, E), its nearest codes e (B, M, E), their indices
    (B, M), and the two VQ terms per example. `mode` is the decoder's input, z_q = z_e + sg(e - z_e)
    flattened to (B, M*E): the forward pass sees e, the gradient reaches z_e (straight through)."""

    exported = ("indices", "mode")

    z_e: torch.Tensor
    e: torch.Tensor
    indices: torch.Tensor
    codebook_loss: torch.Tensor   # ||sg(z_e) - e||^2 summed over the M codes: moves the codebook (0 with EMA)
    commitment_loss: torch.Tensor  # ||z_e - sg(e)||^2: keeps the encoder near its codes

    @property
    def mode(self) -> torch.Tensor:
        return (self.z_e + (self.e - self.z_e).detach()).flatten(-2)


class VectorQuantiser(nn.Module):
    """Codebook (K, E). With `ema`, the codebook follows the running mean of the encoder outputs
    assigned to each code (decay 0.99, Laplace-smoothed counts) instead of a gradient step.

    Against codebook collapse (most codes never chosen), training starts the codebook at encoder
    outputs of the first batch, and a code whose running share of the assignments falls below
    1/(100 K) is restarted at a random encoder output of the current batch (as in Jukebox,
    Dhariwal et al. 2020). The share is a running mean over about 10 steps (usage_decay 0.9): slower
    tracking let the encoder drift away from a codebook that then served 16 of 128 codes on MNIST.
    `restarts=False` turns both off."""

    usage_decay = 0.9

    def __init__(self, size: int, dim: int, ema: bool = False, decay: float = 0.99, eps: float = 1e-5,
                 restarts: bool = True):
        super().__init__()
        self.size, self.dim, self.ema, self.decay, self.eps, self.restarts = size, dim, ema, decay, eps, restarts
        codebook = torch.empty(size, dim).uniform_(-1 / size, 1 / size)
        if ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("cluster_size", torch.zeros(size))
            self.register_buffer("embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("usage", torch.full((size,), 1.0 / size))   # running share of assignments per code
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Indices of the closest codes, (..., E) -> (...)."""
        flat = z_e.detach().float().reshape(-1, self.dim)
        book = self.codebook.float()
        d2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(1)   # (N, K)
        return d2.argmin(1).reshape(z_e.shape[:-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of indices (...) -> (..., E)."""
        return F.embedding(indices, self.codebook)

    def forward(self, z_e: torch.Tensor) -> Quantised:
        z_e = z_e.float()
        learning = self.training and torch.is_grad_enabled()
        if learning and self.restarts:
            self._restart(z_e.detach().reshape(-1, self.dim))
        indices = self.nearest(z_e)
        if learning:   # with several processes, the statistics of the whole global batch (vaekit.distributed)
            counts = sum_over_processes(torch.bincount(indices.reshape(-1), minlength=self.size).float())   # (K,)
            self._track_usage(counts)
            if self.ema:
                self._ema_update(z_e.detach(), indices, counts)
        e = self.lookup(indices)
        commitment = (z_e - e.detach()).pow(2).sum((-2, -1))
        codebook = torch.zeros_like(commitment) if self.ema else (z_e.detach() - e).pow(2).sum((-2, -1))
        return Quantised(z_e, e, indices, codebook, commitment)

    @torch.no_grad()
    def _restart(self, flat: torch.Tensor) -> None:
        """Codes at first, then dead codes, start again at random encoder outputs of this batch."""
        dead = torch.ones(self.size, dtype=torch.bool, device=flat.device) if not self.started \
            else self.usage < 0.01 / self.size
        n = int(dead.sum())
        if n == 0:
            return
        flat = rows_of_all_processes(flat)   # every process picks the same rows of the global batch
        picks = flat[torch.randint(len(flat), (n,), device=flat.device)]
        self.codebook[dead] = picks.to(self.codebook.dtype)
        self.usage[dead] = 1.0 / self.size
        if self.ema:
            self.cluster_size[dead] = self.cluster_size.mean() if self.started else 1.0
            self.embed_sum[dead] = picks * self.cluster_size[dead].unsqueeze(1)
        self.started.fill_(True)

    @torch.no_grad()
    def _track_usage(self, counts: torch.Tensor) -> None:
        self.usage.mul_(self.usage_decay).add_(counts / counts.sum(), alpha=1 - self.usage_decay)

    @torch.no_grad()
    def _ema_update(self, z_e: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, indices.reshape(-1), z_e.reshape(-1, self.dim))  # (K, E)
        sum_over_processes(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.size * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))


def codebook_usage(indices: torch.Tensor, size: int) -> dict[str, float]:
    """Perplexity exp(H(code frequencies)) of the codes used on a data set (K: all used equally,
    1: collapse onto one code), and the number of dead codes (never chosen)."""
    counts = torch.bincount(indices.reshape(-1), minlength=size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"perplexity": math.exp(entropy), "codes_used": int((counts > 0).sum()), "dead_codes": int((counts == 0).sum()),
            "codebook_size": size}


class CodePrior(nn.Module):
    """p(k_1..k_M) = prod_m p(k_m | k_<m): a GRU over the code indices of one example in order,
    fed a start token first. Fitted to the training set's indices after the VQ-VAE is trained."""

    def __init__(self, size: int, positions: int, hidden: int = 128):
        super().__init__()
        self.size, self.positions = size, positions
        self.embed = nn.Embedding(size + 1, hidden)       # index `size` is the start token
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, size)

    def logits(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, M) -> logits (B, M, K) of each position given the ones before it."""
        start = torch.full_like(indices[:, :1], self.size)
        h, _ = self.rnn(self.embed(torch.cat([start, indices[:, :-1]], dim=1)))
        return self.out(h)

    def log_prob(self, indices: torch.Tensor) -> torch.Tensor:
        """log p(indices) in nats, (B, M) -> (B,)."""
        logp = self.logits(indices).float().log_softmax(-1)
        return logp.gather(-1, indices.unsqueeze(-1)).squeeze(-1).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n index sequences (n, M), drawn position by position (softmax of logits / temperature)."""
        device = self.out.weight.device
        token = torch.full((n, 1), self.size, dtype=torch.long, device=device)
        state, drawn = None, []
        for _ in range(self.positions):
            h, state = self.rnn(self.embed(token), state)
            probs = (self.out(h[:, -1]).float() / temperature).softmax(-1)
            token = torch.multinomial(probs, 1)
            drawn.append(token)
        return torch.cat(drawn, dim=1)


def fit_code_prior(prior: CodePrior, indices: torch.Tensor, epochs: int, batch_size: int = 1024, lr: float = 3e-3,
                   log=print) -> list[float]:
    """Maximum likelihood for the prior on training indices (N, M); returns the mean NLL (nats) per epoch."""
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    prior.train()
    history = []
    for epoch in range(epochs):
        perm, total = torch.randperm(len(indices), device=indices.device), 0.0
        for start in range(0, len(indices), batch_size):
            batch = indices[perm[start:start + batch_size]]
            loss = -prior.log_prob(batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        history.append(total / len(indices))
        log(f"code prior epoch {epoch + 1}/{epochs}  -log p(codes) {history[-1]:.2f} nats")
    prior.eval()
    return history
