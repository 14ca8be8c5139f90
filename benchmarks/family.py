"""The VAE family on dynamically binarised MNIST, each trained for the same number of epochs with the
same 784-200-200-50 tanh bodies (the IWAE paper's), batch 100, Adam 1e-3:

    VAE, beta-VAE (beta = 4), IWAE (k = 5), conditional VAE: test -log p(x) with k importance samples
        (default 5,000) on the test images (default all 10,000), with training time;
    VQ-VAE (relu bodies, 16 codes of 8 numbers, codebook of 128, GRU code prior), and a conv VQ-VAE
        (a 7 x 7 grid of codes): reconstruction error, codebook perplexity and dead codes, and the bound
        -log p(x) <= recon - log p(codes).

Also writes docs/images/cvae-samples.png: conditional samples, one column per digit.

    VAEKIT_DATA=../shared/datasets python benchmarks/family.py --epochs 30
    VAEKIT_DATA=../shared/datasets python benchmarks/family.py --epochs 2 --eval-n 500 --eval-k 500   # quick look

Runs go to benchmarks/results/runs-<name>/ and are reused if the script is started again.
Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write  # noqa: E402
from vaekit import DataConfig, Dataset, ModelConfig, RunConfig, TrainConfig, fit, load_data, load_model  # noqa: E402
from vaekit.evaluation.evaluate import log_likelihood  # noqa: E402
from vaekit.outputs.sampling import sample_run  # noqa: E402
from vaekit.store.checkpoint import has_checkpoint  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "images"

# name -> (model config overrides, train config overrides)
VARIANTS = {
    "VAE": ({}, {}),
    "beta-VAE (beta = 4)": ({}, {"beta": 4.0}),
    "IWAE (k = 5)": ({}, {"loss": "iwae", "mc_samples": 5}),
    "conditional VAE": ({"model": "cvae"}, {}),
    # relu: with tanh the unbounded encoder outputs saturate it and the codes stop depending on x
    "VQ-VAE": ({"model": "vqvae", "latent_dim": 16, "code_dim": 8, "codebook_size": 128, "activation": "relu"}, {"loss": "vq"}),
    # the paper's layout: stride-2 convs (32, 64 channels), one code per position of the 7 x 7 map
    "conv VQ-VAE": ({"model": "vqvae", "arch": "conv", "hidden_dims": (32, 64), "code_dim": 8, "codebook_size": 128,
                     "activation": "relu"}, {"loss": "vq"}),
}


def config(model_kw: dict, train_kw: dict, epochs: int, device: str) -> RunConfig:
    return RunConfig(ModelConfig(**{"latent_dim": 50, "hidden_dims": (200, 200), "activation": "tanh", **model_kw}),
                     DataConfig("mnist", pixels="dynamic", val_size=0),
                     TrainConfig(**{"epochs": epochs, "batch_size": 100, "lr": 1e-3, "device": device, **train_kw}))


def slug(name: str) -> str:
    return name.split(" (")[0].lower().replace(" ", "-") + ("-" + name.split("= ")[1].rstrip(")") if "=" in name else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--eval-k", type=int, default=5000)
    p.add_argument("--eval-n", type=int, default=10000, help="test images to evaluate (default all 10,000)")
    p.add_argument("--device", default="auto")
    p.add_argument("--name", default="family")
    p.add_argument("--only", nargs="+", choices=[slug(n) for n in VARIANTS], help="these variants only")
    args = p.parse_args()
    runs = RESULTS / f"runs-{args.name}"
    rows = []
    for name, (model_kw, train_kw) in VARIANTS.items():
        if args.only and slug(name) not in args.only:
            continue
        run_dir = runs / slug(name)
        cfg = config(model_kw, train_kw, args.epochs, args.device)
        print(f"== {name}", flush=True)
        if has_checkpoint(run_dir):
            history = None
        else:
            t0 = time.perf_counter()
            history = fit(cfg, run_dir, progress=False).history
            (run_dir / "wall_seconds").write_text(f"{time.perf_counter() - t0:.1f}\n")
        model, saved, epoch = load_model(run_dir, args.device)
        history = history or [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        test = load_data(saved.data).test.to(model.device)
        test = Dataset(test.head(args.eval_n), None if test.y is None else test.y[:args.eval_n])
        row = {"model": name, "epochs": epoch, "train_minutes": sum(r["seconds"] for r in history) / 60,
               "wall_minutes": float((run_dir / "wall_seconds").read_text()) / 60}
        torch.manual_seed(0)
        if model.stochastic:
            r = log_likelihood(model, test, k=args.eval_k, precision="auto")
            r.pop("per_example_nll")
            row.update(nll=r["nll"], nll_se=r["nll_se"], neg_elbo=r["neg_elbo"], recon=r["recon"], kl=r["kl"],
                       active_units=r["active_units"], eval_seconds=r["seconds"], k=r["k"], n=r["n"], nll_precision=r["precision"])
        else:
            c = model.evaluation_extras(test)["codes"]
            row.update(recon=c["recon"], nll_bound=c["nll_bound"], prior_nll=c["prior_nll"], perplexity=c["perplexity"],
                       dead_codes=c["dead_codes"], n=len(test))
        if model.conditional:
            DOCS.mkdir(exist_ok=True)
            row["figure"] = str(sample_run(run_dir, n=100, out=DOCS / "cvae-samples.png", device=args.device))
        rows.append(row)
        print(row, flush=True)
    md = write(args.name, {"protocol": "dynamic MNIST, 784-200-200-50 tanh, batch 100, Adam 1e-3", "eval_k": args.eval_k,
                           "epochs": args.epochs}, rows,
               ["model", "epochs", "train_minutes", "wall_minutes", "nll", "nll_se", "neg_elbo", "kl", "active_units", "recon",
                "nll_bound", "perplexity", "dead_codes", "k", "n", "eval_seconds"])
    print(md.read_text())


if __name__ == "__main__":
    main()
