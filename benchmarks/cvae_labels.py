"""Does a conditional VAE draw the digit it is asked for? A classifier trained here on MNIST (an MLP, its test
accuracy printed; the measure is meaningful at >= 98%) labels `--per-class` samples of each digit from a CVAE
trained by `vaekit train --model cvae` with the given flags (default: the getting-started recipe, as it is); the
share of samples classified as their requested label, overall and per class, is the answer. The CPU, its matmul
peaks, the threads and the load are written beside it.

    VAEKIT_DATA=../shared/datasets python benchmarks/cvae_labels.py                      # the recipe as documented
    VAEKIT_DATA=../shared/datasets python benchmarks/cvae_labels.py -- --epochs 30       # flags for vaekit train
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import conditions, write
from speed import matmul_gflops
from vaekit import DataConfig, load_data
from vaekit.store.checkpoint import load_model


def classifier(data, epochs: int = 8) -> tuple[nn.Module, float]:
    """An MLP on grey MNIST (784-512-256-10, dropout 0.2, Adam), and its test accuracy."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 256), nn.ReLU(),
                        nn.Dropout(0.2), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = data.train.examples(), data.train.y
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(128):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(data.test.examples()).argmax(1) == data.test.y).float().mean().item()
    return net, accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="z ~ N(0, t^2 I), as vaekit sample --temperature")
    p.add_argument("--name", default="cvae_labels", help="results/NAME.{json,md}")
    p.add_argument("train_flags", nargs="*", help="flags for vaekit train after --")
    args = p.parse_args()
    peaks = {"bf16_gflops": matmul_gflops(torch.bfloat16), "fp32_gflops": matmul_gflops(torch.float32)}
    before = conditions(peaks)
    net, accuracy = classifier(load_data(DataConfig("mnist", val_size=0)))
    print(f"classifier: test accuracy {accuracy:.4f}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "vaekit", "train", "--model", "cvae", "--run-dir", f"{d}/cvae", "--no-report",
                        "--no-progress", *args.train_flags], check=True, stdout=subprocess.DEVNULL)
        model, _, _ = load_model(Path(d) / "cvae")
    labels = torch.arange(10).repeat_interleave(args.per_class)
    torch.manual_seed(0)
    with torch.no_grad():
        bound = model.given(labels)
        images = bound.decode(bound.prior().sample(len(labels), args.temperature)).mean.float()
        said = net(images).argmax(1)
    per_class = [(said[labels == k] == k).float().mean().item() for k in range(10)]
    share = (said == labels).float().mean().item()
    rows = [{"digit": str(k), "samples classified as asked": per_class[k]} for k in range(10)]
    rows.append({"digit": "all", "samples classified as asked": share})
    flags = " ".join(args.train_flags) or "(the recipe's defaults)"
    out = write(args.name, {"classifier_accuracy": accuracy, "train_flags": flags, "temperature": args.temperature, "before": before,
                                "after": conditions(peaks)}, rows, ["digit", "samples classified as asked"])
    print(out.read_text())
    print(f"vaekit train --model cvae {flags}, temperature {args.temperature:g}: {share:.3f} of {len(labels):,} samples "
          "classified as their label "
          f"(classifier accuracy {accuracy:.4f}); {before}")


if __name__ == "__main__":
    os.environ.setdefault("VAEKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    main()
