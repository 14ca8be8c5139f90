"""The IWAE paper's one-stochastic-layer MNIST protocol (Burda et al. 2016, Table 1):
train the iwae-paper preset (784-200-200-50 tanh, dynamic binarisation, batch 20) as a VAE
for a time budget, train IWAE (k=5) for the same number of epochs, and estimate the test
log-likelihood of both with k=5,000 importance samples on all 10,000 test images.

    VAEKIT_DATA=../shared/datasets python benchmarks/likelihood.py --minutes 30
    VAEKIT_DATA=../shared/datasets python benchmarks/likelihood.py --epochs 3 --eval-n 1000   # quick look

Runs go to benchmarks/results/runs-<name>/ and are resumed if the script is started again.
Writes benchmarks/results/<name>.json and .md beside the published numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write  # noqa: E402
from vaekit import Dataset, fit, load_data, load_model  # noqa: E402
from vaekit.config.presets import get_preset  # noqa: E402
from vaekit.evaluation.evaluate import log_likelihood  # noqa: E402
from vaekit.store.checkpoint import has_checkpoint  # noqa: E402

PUBLISHED = {"vae": 86.76, "iwae-5": 85.54, "iwae-50": 84.78}  # IWAE paper, Table 1, one stochastic layer


def train(name: str, run_dir: Path, loss: str, k: int, epochs: int, minutes: float | None, device: str):
    base = get_preset("iwae-paper")
    train_cfg = dataclasses.replace(base.train, loss=loss, mc_samples=k, epochs=epochs, max_minutes=minutes, device=device)
    config = dataclasses.replace(base, train=train_cfg)
    print(f"== {name}: {loss} k={k}, up to {epochs} epochs" + (f" or {minutes:g} minutes" if minutes else ""), flush=True)
    return fit(config, run_dir, resume=has_checkpoint(run_dir), progress=False)


def evaluate(run_dir: Path, k: int, n: int, device: str, precision: str) -> dict:
    model, config, epoch = load_model(run_dir, device)
    test = load_data(config.data).test
    torch.manual_seed(0)
    r = log_likelihood(model, Dataset(test.head(n)).to(model.device), k=k, precision=precision)
    r.pop("per_example_nll")
    return {"epochs": epoch, **r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="VAE training budget (default 30)")
    p.add_argument("--epochs", type=int, default=3280, help="epoch cap (default: the paper's 3,280)")
    p.add_argument("--iwae-k", type=int, default=5)
    p.add_argument("--iwae-epochs", type=int, help="default: as many as the VAE trained (equal epochs)")
    p.add_argument("--eval-k", type=int, default=5000)
    p.add_argument("--eval-n", type=int, default=10000, help="test images to evaluate (default all 10,000)")
    p.add_argument("--eval-precision", default="auto", help="autocast for the k=5,000 evaluation (default auto: bf16 where faster)")
    p.add_argument("--device", default="auto")
    p.add_argument("--name", default="likelihood")
    p.add_argument("--only", choices=("vae", "iwae"), help="train/evaluate one model only")
    args = p.parse_args()
    runs = RESULTS / f"runs-{args.name}"
    rows = []
    vae_dir = runs / "vae"
    if args.only != "iwae":
        vae = train("vae", vae_dir, "elbo", 1, args.epochs, args.minutes, args.device)
        rows.append({"model": "VAE", "published_nll": PUBLISHED["vae"],
                     "train_minutes": sum(r["seconds"] for r in vae.history) / 60,
                     **evaluate(vae_dir, args.eval_k, args.eval_n, args.device, args.eval_precision)})
        print(rows[-1], flush=True)
    if args.only != "vae":
        epochs = args.iwae_epochs or (load_model(vae_dir)[2] if has_checkpoint(vae_dir) else args.epochs)  # equal epochs
        iwae_dir = runs / f"iwae-{args.iwae_k}"
        iwae = train(f"iwae-{args.iwae_k}", iwae_dir, "iwae", args.iwae_k, epochs, None, args.device)
        rows.append({"model": f"IWAE k={args.iwae_k}", "published_nll": PUBLISHED.get(f"iwae-{args.iwae_k}", ""),
                     "train_minutes": sum(r["seconds"] for r in iwae.history) / 60,
                     **evaluate(iwae_dir, args.eval_k, args.eval_n, args.device, args.eval_precision)})
        print(rows[-1], flush=True)
    md = write(args.name, {"protocol": "IWAE paper one stochastic layer, dynamic MNIST", "eval_k": args.eval_k,
                           "minutes": args.minutes}, rows,
               ["model", "epochs", "train_minutes", "nll", "nll_se", "published_nll", "neg_elbo", "kl",
                "active_units", "k", "n", "seconds"])
    print(md.read_text())


if __name__ == "__main__":
    main()
