"""The pytorch/examples VAE on MNIST (784-400-20 ReLU MLP, grey pixels, Bernoulli/BCE,
Adam 1e-3, batch 128, 10 epochs), trained by vaekit; reports the test negative ELBO (z
sampled, L=1, as pytorch/examples does), seconds per epoch and images per second.

    VAEKIT_DATA=../shared/datasets python benchmarks/train_mnist.py [--precision fp32 bf16] [--val-size 5000 0]

Published (pytorch/examples, 10 epochs): test loss 105.6 nats/image.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402
from vaekit import DataConfig, ModelConfig, RunConfig, TrainConfig, evaluate, fit, load_data  # noqa: E402
from vaekit.runtime import resolve_precision  # noqa: E402


def run(precision: str, val_size: int, epochs: int, device: str, eval_seeds: int) -> dict:
    config = RunConfig(ModelConfig(latent_dim=20, hidden_dims=(400,), activation="relu", likelihood="bernoulli"),
                       DataConfig("mnist", pixels="grey", val_size=val_size),
                       TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, precision=precision, device=device))
    data = load_data(config.data)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(config, Path(tmp) / "run", data=data, progress=False)
    test = data.test.to(result.model.device)
    losses = []
    for seed in range(eval_seeds):  # the test ELBO with sampled z is itself random: average a few draws
        torch.manual_seed(seed)
        losses.append(evaluate(result.model, test, config.train)["loss"])
    h = result.history
    return {"precision": resolve_precision(precision, result.model.device), "val_size": val_size,
            "train_images": len(data.train), "epochs": epochs, "device": str(result.model.device),
            "test_neg_elbo": statistics.mean(losses), "test_neg_elbo_sd_over_draws": statistics.pstdev(losses),
            "seconds_per_epoch": statistics.median(r["seconds"] for r in h),
            "images_per_s": statistics.median(r["images_per_s"] for r in h),
            "train_seconds_total": sum(r["seconds"] for r in h)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--val-size", nargs="+", type=int, default=[5000, 0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-seeds", type=int, default=5)
    p.add_argument("--name", default="train_mnist")
    args = p.parse_args()
    rows = [run(prec, v, args.epochs, args.device, args.eval_seeds) for v in args.val_size for prec in args.precision]
    for r in rows:
        print(r)
    md = write(args.name, {"published_pytorch_examples": 105.6}, rows,
               ["precision", "train_images", "epochs", "device", "test_neg_elbo", "seconds_per_epoch", "images_per_s"])
    print(md.read_text())


if __name__ == "__main__":
    main()
