"""Encoder and decoder bodies, sized from config (never literal layer sizes).

An ARCHITECTURES entry builds the pair (encoder, decoder) for a ModelConfig:
the encoder maps x (B, C, H, W) (and, for a conditional model, a label code c (B, cond_dim))
to (B, code_size) (code_size = encoder outputs x latent_dim); the decoder maps its input
(..., z_size + cond_dim) (z and the label code, concatenated by the model) to
(..., C*H*W * params_per_feature), which a likelihood head (vaekit.models.likelihoods) unflattens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

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


def join(h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Features (B, F) with the label code c (B, K) appended, if any: (B, F + K)."""
    return h if c is None else torch.cat([h, c.to(h.dtype)], dim=-1)


class FlatInput(nn.Sequential):
    """A Sequential that first flattens each example: (B, C, H, W) -> (B, C*H*W) (+ the label code). Same parameter names as nn.Sequential."""

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(join(x.flatten(1), c))


def mlp_bodies(config, code_size: int, params_per_feature: int, z_size: int | None = None,
               cond_dim: int = 0, grid_dim: int = 0) -> tuple[nn.Module, nn.Module]:
    """Fully connected: hidden_dims are the encoder's layer widths; the decoder mirrors them."""
    # grid_dim (a VQ-VAE's code grid) has no meaning here: the codes are latent_dim slices of the output
    if config.residual:
        raise ConfigError("residual blocks are part of arch='conv'; drop --residual or add --arch conv")
    n_x, hidden = math.prod(config.input_shape), list(config.hidden_dims)
    encoder = FlatInput(*mlp([n_x + cond_dim, *hidden, code_size], config.activation))
    decoder = mlp([(z_size or config.latent_dim) + cond_dim, *hidden[::-1], n_x * params_per_feature], config.activation)
    return encoder, decoder


class ResidualBlock(nn.Module):
    """x + conv3x3(act(conv3x3(act(x)))): same channels, same size (He et al. 2016, pre-activation)."""

    def __init__(self, channels: int, act: str):
        super().__init__()
        self.body = nn.Sequential(activation(act), nn.Conv2d(channels, channels, 3, padding=1),
                                  activation(act), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def conv_sizes(hw: tuple[int, int], n_layers: int) -> list[tuple[int, int]]:
    """Feature-map sizes through the encoder: a 4x4 stride-2 conv (padding 1) halves (floor) a map
    of at least 2x2; once a side is 1 the remaining layers are 3x3 stride-1 and keep the size."""
    sizes = [tuple(hw)]
    for _ in range(n_layers):
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2) if min(h, w) >= 2 else (h, w))
    return sizes


def grid_size(config) -> tuple[int, int]:
    """(h, w) of the conv encoder's last feature map for this config's images and widths."""
    return conv_sizes(tuple(config.input_shape[1:]), len(config.hidden_dims))[-1]


class ConvEncoder(nn.Module):
    """x (B, C, H, W) -> stride-2 convs (widths hidden_dims) -> flatten (+ label code) -> Linear -> (B, code_size).
    With grid_dim (a VQ-VAE), a 1x1 conv instead gives grid_dim numbers at each position of the last
    feature map (h, w): (B, h*w*grid_dim), position-major (raster order), one code per position."""

    def __init__(self, config, code_size: int, cond_dim: int = 0, grid_dim: int = 0):
        super().__init__()
        c, h, w = config.input_shape
        widths, act = list(config.hidden_dims), config.activation
        sizes = conv_sizes((h, w), len(widths))
        layers: list[nn.Module] = []
        for c_in, c_out, (size_in, size_out) in zip([c, *widths], widths, zip(sizes, sizes[1:])):
            down = size_out != size_in
            layers += [nn.Conv2d(c_in, c_out, 4 if down else 3, stride=2 if down else 1, padding=1), activation(act)]
            if config.residual:
                layers.append(ResidualBlock(c_out, act))
        self.features = nn.Sequential(*layers)
        self.grid = grid_dim > 0
        if self.grid:
            self.head = nn.Conv2d(widths[-1], grid_dim, 1)
        else:
            self.head = nn.Linear(widths[-1] * math.prod(sizes[-1]) + cond_dim, code_size)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.grid:
            return self.head(self.features(x)).permute(0, 2, 3, 1).flatten(1)   # (B, h, w, E) -> (B, h*w*E)
        return self.head(join(self.features(x).flatten(1), c))


class ConvDecoder(nn.Module):
    """z (..., in_size) -> Linear to the smallest feature map -> transposed convs back up (output_padding
    restores odd sides exactly) -> 3x3 conv to C * params_per_feature channels -> (..., C*H*W*params).
    With grid_dim (a VQ-VAE), z is a code of grid_dim numbers per position of the smallest map, taken
    in by a 1x1 conv instead of the Linear."""

    def __init__(self, config, params_per_feature: int, in_size: int, grid_dim: int = 0):
        super().__init__()
        c, h, w = config.input_shape
        widths, act = list(config.hidden_dims), config.activation
        sizes = conv_sizes((h, w), len(widths))
        self.start = (widths[-1], *sizes[-1])  # (C_last, h_n, w_n)
        self.grid = (*sizes[-1], grid_dim) if grid_dim else None
        first = nn.Conv2d(grid_dim, widths[-1], 1) if grid_dim else nn.Linear(in_size, math.prod(self.start))
        self.project = nn.Sequential(first, activation(act))
        layers: list[nn.Module] = []
        # Walk the encoder backwards: layer i took sizes[i] -> sizes[i+1] and widths[i-1] -> widths[i].
        for i in reversed(range(len(widths))):
            c_in, c_out = widths[i], widths[max(i - 1, 0)]
            (h_out, w_out), (h_in, w_in) = sizes[i], sizes[i + 1]
            if (h_out, w_out) != (h_in, w_in):  # ConvTranspose2d(k4, s2, p1) gives 2n; + output_padding (0 or 1) gives exactly n_out
                pad = (h_out - 2 * h_in, w_out - 2 * w_in)
                layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, output_padding=pad))
            else:
                layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            layers.append(activation(act))
            if config.residual:
                layers.append(ResidualBlock(c_out, act))
        layers.append(nn.Conv2d(widths[0], c * params_per_feature, 3, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]  # e.g. (k, B) with Monte Carlo samples: convs need one batch dim
        z = z.reshape(-1, z.shape[-1])
        if self.grid:
            start = self.project(z.unflatten(-1, self.grid).permute(0, 3, 1, 2))   # (N, E, h, w) -> (N, C_last, h, w)
        else:
            start = self.project(z).unflatten(-1, self.start)
        return self.features(start).reshape(*lead, -1)


def conv_bodies(config, code_size: int, params_per_feature: int, z_size: int | None = None,
                cond_dim: int = 0, grid_dim: int = 0) -> tuple[nn.Module, nn.Module]:
    """Convolutional (DCGAN-like) for any C x H x W: hidden_dims are the channel widths of stride-2 convs; residual blocks optional."""
    if len(config.input_shape) != 3:
        raise ConfigError(f"arch='conv' needs images shaped (C, H, W); the data are {tuple(config.input_shape)} (use --arch mlp)")
    if not config.hidden_dims:
        raise ConfigError("arch='conv' needs at least one channel width (--hidden N [N ...])")
    return (ConvEncoder(config, code_size, cond_dim, grid_dim),
            ConvDecoder(config, params_per_feature, (z_size or config.latent_dim) + cond_dim, grid_dim))


# Encoder/decoder bodies by name: (config, code_size, params_per_feature, z_size, cond_dim, grid_dim) -> (encoder, decoder).
conv_bodies.reads = ("residual",)   # the ModelConfig fields only this architecture reads
mlp_bodies.reads = ()

ARCHITECTURES = {
    "mlp": mlp_bodies,
    "conv": conv_bodies,
}
