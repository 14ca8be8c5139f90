"""Frozen configuration dataclasses, saved as config.json next to the weights.

A run is fully described by RunConfig(model, data, train). Models never mutate their
config; changing an option means building a new config (dataclasses.replace).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

PIXEL_MODES = ("grey", "dynamic", "static")  # grey in [0,1]; Bernoulli draw per epoch; one fixed draw
KL_MODES = ("analytic", "mc")
LR_SCHEDULES = ("constant", "iwae")
SCHEDULES = ("joint", "alternating")  # alternating: variational EM, E-steps on phi (encoder), M-steps on theta  # iwae: 3^i epochs at lr * 10^(-i/7), i = 0..7 (Burda et al. 2016)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        need = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} is impossible: it must be {need}")


@dataclass(frozen=True)
class ModelConfig:
    model: str = "vae"                           # a key of vaekit.models.MODELS
    input_shape: tuple[int, ...] = (1, 28, 28)   # (C, H, W); filled in from the data at train time
    latent_dim: int = 20
    hidden_dims: tuple[int, ...] = (400,)        # encoder widths; the decoder mirrors them
    activation: str = "relu"
    arch: str = "mlp"                            # a key of vaekit.nets.ARCHITECTURES: mlp, conv (hidden_dims are then channel widths)
    residual: bool = False                       # conv: a residual block (two 3x3 convs + skip) after each stage
    likelihood: str = "bernoulli"                # a key of vaekit.distributions.LIKELIHOODS
    obs_std: float = 0.1                         # std of the fixed-variance Gaussian likelihood
    num_classes: int = 0                         # cvae: label classes (filled in from the data at train time)
    codebook_size: int = 128                     # vqvae: K codes; each example is latent_dim codes of code_dim numbers
    code_dim: int = 8                            # vqvae: E, the length of a code vector
    codebook_ema: bool = False                   # vqvae: EMA codebook (decay 0.99) instead of the codebook loss

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "hidden_dims", tuple(int(d) for d in self.hidden_dims))
        _check_positive("latent_dim", self.latent_dim)
        for d in self.hidden_dims + self.input_shape:
            _check_positive("a layer size", d)
        _check_positive("obs_std", self.obs_std)
        _check_positive("num_classes", self.num_classes, allow_zero=True)
        _check_positive("codebook_size", self.codebook_size)
        _check_positive("code_dim", self.code_dim)
        from .nets import ARCHITECTURES  # here, not at the top: config.py stays importable without torch

        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"architecture {self.arch!r} is unknown; choose one of {', '.join(ARCHITECTURES)}")


@dataclass(frozen=True)
class DataConfig:
    source: str = "mnist"            # a key of vaekit.data.SOURCES
    pixels: str = "grey"
    val_size: int = 5000             # carved from the training set; 0 means no validation
    data_dir: str | None = None      # None: $VAEKIT_DATA, else ~/.cache/vaekit
    limit: int | None = None         # use only the first N training images (quick runs, tests)
    path: str | None = None          # folder, npy, csv: the folder or file; stored absolute so a saved run finds it anywhere
    image_size: int | None = None    # folder: resize every image to image_size x image_size (None: keep, all must match)
    label_column: str | None = None  # csv: the column of class labels (not a feature); None: no labels
    test_fraction: float = 0.1       # folder, npy, csv: share held out as the test set (fixed seed)

    def __post_init__(self):
        _check_choice("pixels", self.pixels, PIXEL_MODES)
        _check_positive("val_size", self.val_size, allow_zero=True)
        if self.limit is not None:
            _check_positive("limit", self.limit)
        if self.path is not None:
            if not str(self.path).strip():
                raise ConfigError("path='' is impossible: give the file or folder to read")
            object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(str(self.path))))
        if self.image_size is not None:
            _check_positive("image_size", self.image_size)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction={self.test_fraction!r} is impossible: it must be between 0 and 1 (e.g. 0.1)")


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "elbo"               # a key of vaekit.objectives.LOSSES
    beta: float = 1.0                # weight of the KL term (1 = the ELBO)
    kl_warmup_epochs: float = 0.0    # KL weight rises linearly from 0 to beta over this many epochs
    capacity: float = 25.0           # loss 'capacity': C_max in nats, reached after capacity_epochs
    capacity_epochs: float = 10.0
    gamma: float = 1000.0            # loss 'capacity': weight of |KL - C|
    commitment: float = 0.25         # loss 'vq': weight of the commitment term ||z_e - sg(e)||^2
    prior_epochs: int = 10           # vqvae: epochs of the autoregressive code prior, fitted after training
    mc_samples: int = 1              # samples of z per example: L for elbo, k for iwae
    kl: str = "analytic"             # closed form, or Monte Carlo log q(z|x) - log p(z)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    schedule: str = "joint"          # joint: encoder and decoder every step; alternating: e_steps, then m_steps
    e_steps: int = 1                 # alternating: optimiser steps on the encoder (E-step) per round
    m_steps: int = 1                 # alternating: optimiser steps on the decoder (M-step) per round
    adam_eps: float = 1e-8
    max_minutes: float | None = None  # stop after the epoch in which this much training time has passed
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"          # bf16 autocast for the matmuls (auto: where the CPU/GPU has bf16 units); weights and sums stay fp32

    def __post_init__(self):
        _check_positive("beta", self.beta, allow_zero=True)
        _check_positive("mc_samples", self.mc_samples)
        _check_positive("prior_epochs", self.prior_epochs, allow_zero=True)
        for name in ("kl_warmup_epochs", "capacity", "capacity_epochs", "gamma", "commitment"):
            _check_positive(name, getattr(self, name), allow_zero=True)
        _check_choice("kl", self.kl, KL_MODES)
        _check_positive("epochs", self.epochs, allow_zero=True)
        _check_positive("batch_size", self.batch_size)
        _check_positive("lr", self.lr)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_positive("e_steps", self.e_steps)
        _check_positive("m_steps", self.m_steps)
        _check_positive("adam_eps", self.adam_eps)
        if self.max_minutes is not None:
            _check_positive("max_minutes", self.max_minutes)
        _check_choice("device", self.device, DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        parts = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
        if not isinstance(d, dict) or set(d) - set(parts):
            raise ConfigError(f"a run config has the sections {', '.join(parts)}; got {sorted(d) if isinstance(d, dict) else type(d).__name__}")
        return cls(**{k: _build(parts[k], d.get(k, {})) for k in parts})

    def save(self, path: str | Path) -> None:
        from .checkpoint import atomic_write_text  # one atomic-write helper for the project

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None


def _build(kind, values: dict):
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} field(s): {', '.join(sorted(unknown))}")
    try:
        return kind(**values)
    except TypeError as e:
        raise ConfigError(f"bad {kind.__name__}: {e}") from None
