"""The floor of an eager PyTorch training step for mnist-fast's network on this machine: the same VAE (784-400-20,
ReLU, grey MNIST, BCE, closed-form KL) written for speed alone (nn.Linear, bf16 autocast, fused Adam; the images
as floats in memory; no NaN guard, no per-step sums, no checkpoints), to compare with `vaekit train` at the same
batch size. Prints images/s per epoch.

    VAEKIT_DATA=../shared/datasets python benchmarks/bare_step.py --batch-size 256 --epochs 3
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.config.presets import get_preset
from vaekit.data.dataset import load_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    train = load_data(get_preset("mnist-fast").data).train
    x_all = train.take(torch.arange(len(train))).reshape(len(train), -1)
    enc1, enc2, dec1, dec2 = nn.Linear(784, 400), nn.Linear(400, 40), nn.Linear(20, 400), nn.Linear(400, 784)
    params = [q for m in (enc1, enc2, dec1, dec2) for q in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)

    def step(x):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stats = enc2(F.relu(enc1(x)))
            mu, logvar = stats[:, :20].float(), stats[:, 20:].float()
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            logits = dec2(F.relu(dec1(z)))
        recon = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum")
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum()
        ((recon + kl) / len(x)).backward()
        opt.step()

    for epoch in range(args.epochs):
        order = torch.randperm(len(x_all))
        t0 = time.perf_counter()
        for i in range(0, len(x_all), args.batch_size):
            step(x_all.index_select(0, order[i:i + args.batch_size]))
        print(f"epoch {epoch + 1}: {len(x_all) / (time.perf_counter() - t0):,.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
