"""Named configurations that reproduce published settings; `vaekit train --preset NAME`."""

from __future__ import annotations

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .errors import ConfigError

PRESETS = {
    # pytorch/examples vae/main.py: 784-400-20 ReLU MLP, grey MNIST, BCE, Adam 1e-3, batch 128, 10 epochs.
    "pytorch-examples": RunConfig(
        ModelConfig(latent_dim=20, hidden_dims=(400,), activation="relu"),
        DataConfig("mnist", pixels="grey"),
        TrainConfig(epochs=10, batch_size=128, lr=1e-3),
    ),
    # The demo's fallback without MNIST: a smaller VAE for scikit-learn's 1,500 8x8 digits.
    "digits": RunConfig(
        ModelConfig(latent_dim=8, hidden_dims=(256,)),
        DataConfig("digits", val_size=200),
        TrainConfig(epochs=100, batch_size=64),
    ),
    # Burda, Grosse & Salakhutdinov (2016), one stochastic layer: 784-200-200-50 tanh, dynamic
    # binarisation, the full 60,000 training images, Adam (eps 1e-4), batch 20, 3^i epochs at
    # 1e-3 * 10^(-i/7) for i = 0..7 (3,280 epochs; cut with --epochs or --max-minutes).
    # fp32: at batch 20 bf16 casts cost more than the small matmuls gain.
    "iwae-paper": RunConfig(
        ModelConfig(latent_dim=50, hidden_dims=(200, 200), activation="tanh"),
        DataConfig("mnist", pixels="dynamic", val_size=0),
        TrainConfig(epochs=3280, batch_size=20, lr=1e-3, lr_schedule="iwae", adam_eps=1e-4, precision="fp32"),
    ),
}


def get_preset(name: str) -> RunConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset {name!r} is unknown; choose one of {', '.join(PRESETS)}") from None
