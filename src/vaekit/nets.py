"""Encoder and decoder bodies, sized from config (never literal layer sizes)."""

from __future__ import annotations

from torch import nn

from .errors import ConfigError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"activation {name!r} is unknown; choose one of {', '.join(ACTIVATIONS)}") from None


def mlp(sizes: list[int], act: str) -> nn.Sequential:
    """Fully connected: Linear layers sizes[0] -> ... -> sizes[-1], `act` between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


# Encoder/decoder bodies by name (`vaekit list`); the models build theirs with mlp.
ARCHITECTURES = {
    "mlp": mlp,
}
