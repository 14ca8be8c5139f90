"""Named configurations that reproduce published settings; `vaekit train --preset NAME`."""

from __future__ import annotations

from ..errors import ConfigError
from .schema import DataConfig, ModelConfig, RunConfig, TrainConfig

PRESETS = {
    # pytorch/examples vae/main.py: 784-400-20 ReLU MLP, grey MNIST, BCE, Adam 1e-3, batch 128, 10 epochs.
    "pytorch-examples": RunConfig(
        ModelConfig(latent_dim=20, hidden_dims=(400,), activation="relu"),
        DataConfig("mnist", pixels="grey"),
        TrainConfig(epochs=10, batch_size=128, lr=1e-3),
    ),
    # The pytorch-examples network trained for the least wall-clock time to its published test -ELBO (105.6):
    # every training image (no hold-out), a 1-epoch warm-up to lr 2e-2, then cosine to 0 over 5 epochs, batch 256
    # and in the last epoch 1024 (the learning rate is near 0 by then). Measured on this project's 2-core AMD EPYC
    # (bf16) with benchmarks/recipes.py, 5 interleaved rounds, 2026-11-26: test -ELBO 105.31 (seeds 1, 2: 105.35,
    # 105.36) in a median 4.68 s from the command's start, faster in every round than batch 256 throughout (105.13
    # in 4.85 s): its last epoch ran at 123k images/s against 90k at 256. (6 rounds while the VM was busy: a tie.)
    # 1024 from epoch 3 over 7 epochs gave 105.05 but is slower; from epoch 2 over 5, 6 or 7 epochs 106.70, 106.25,
    # 105.76. Earlier: lr 1.5e-2 over 6 epochs 104.60 in 8.0 s, over 5 epochs 105.28-105.55; a half-epoch warm-up
    # 106.02; the constant-lr recipe (batch 256, lr 2e-3, 12 epochs) 105.68 in 11.9 s.
    "mnist-fast": RunConfig(
        ModelConfig(latent_dim=20, hidden_dims=(400,), activation="relu"),
        DataConfig("mnist", pixels="grey", val_size=0),
        TrainConfig(epochs=5, batch_size=256, batch_growth=((4, 1024),), lr=2e-2, lr_schedule="cosine",
                    lr_warmup_epochs=1.0),
    ),
    # The demo's fallback without MNIST: a smaller VAE for scikit-learn's 1,500 8x8 digits.
    "digits": RunConfig(
        ModelConfig(latent_dim=8, hidden_dims=(256,)),
        DataConfig("digits", val_size=200),
        TrainConfig(epochs=100, batch_size=64),
    ),
    # The best one-stochastic-layer model this project trains in 30 minutes on its 2-core CPU (benchmarks/quality.py):
    # dynamically binarised MNIST, every training image, 784-500-500-50 ReLU, the VampPrior (Tomczak & Welling 2018,
    # 500 pseudo-inputs) and two IAF steps (Kingma et al. 2016), the ELBO with a 20-epoch KL warm-up, batch 256 in bf16
    # where it is faster, a 1-epoch warm-up to lr 1e-3 and cosine decay over 450 epochs, which about fill 30 minutes
    # at the 16.8k images/s measured here; the budget stops it at 30 minutes on a slower machine.
    "mnist-30min": RunConfig(
        ModelConfig(latent_dim=50, hidden_dims=(500, 500), activation="relu", prior="vamp", posterior="iaf"),
        DataConfig("mnist", pixels="dynamic", val_size=0),
        TrainConfig(epochs=450, batch_size=256, lr=1e-3, lr_schedule="cosine", lr_warmup_epochs=1.0,
                    kl_warmup_epochs=20.0, max_minutes=30.0),
    ),
    # The IWAE paper's two-stochastic-layer network sizes (Burda et al. 2016, sec. 5: 784-100-100-[100]-50-50-[50]) with
    # the IWAE bound, k = 5, on dynamically binarised MNIST; ReLU, batch 100, lr 2e-3 and a cosine schedule over 270
    # epochs instead of the paper's tanh, batch 20 and 3,280 epochs, to fit a 30-minute budget on a 2-core CPU
    # (benchmarks/quality.py; about 9.5k images/s here). With tanh and lr 1e-3 at batch 100, both this model and a
    # one-layer VAE sat at the pixels' marginal (~206 nats, KL < 1) for the first epochs.
    "two-layer-iwae": RunConfig(
        ModelConfig(model="hvae", latent_dim=100, hidden_dims=(100, 100), activation="relu", upper_latent_dims=(50,),
                    upper_hidden_dims=(50, 50)),
        DataConfig("mnist", pixels="dynamic", val_size=0),
        TrainConfig(loss="iwae", mc_samples=5, epochs=270, batch_size=100, lr=2e-3, lr_schedule="cosine",
                    lr_warmup_epochs=1.0, max_minutes=30.0),
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
