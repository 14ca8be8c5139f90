"""Joint training against the variational-EM schedule of notes 004 (--schedule alternating: E-steps
on the encoder phi, then M-steps on the decoder theta), on dynamically binarised MNIST with the
784-200-200-50 tanh VAE, batch 100, Adam 1e-3. After every epoch the test -log p(x) is estimated
with k importance samples (default 500) on the first n test images (default 1,000); the time
axis is training time only (the estimates are not counted).

    VAEKIT_DATA=../shared/datasets python benchmarks/schedule.py --epochs 30

Writes benchmarks/results/<name>.json and .md (final numbers per schedule, and the curve per epoch).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write  # noqa: E402
from vaekit import DataConfig, Dataset, ModelConfig, RunConfig, TrainConfig, fit, load_data  # noqa: E402
from vaekit.evaluation.evaluate import log_likelihood  # noqa: E402

SCHEDULES = {"joint": {}, "alternating 1:1": {"schedule": "alternating"},
             "alternating 10:10": {"schedule": "alternating", "e_steps": 10, "m_steps": 10}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--eval-k", type=int, default=500)
    p.add_argument("--eval-n", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--name", default="schedule")
    args = p.parse_args()
    data_cfg = DataConfig("mnist", pixels="dynamic", val_size=0)
    data = load_data(data_cfg)
    test = Dataset(data.test.head(args.eval_n))
    rows, curves = [], {}
    for name, kw in SCHEDULES.items():
        config = RunConfig(ModelConfig(latent_dim=50, hidden_dims=(200, 200), activation="tanh"), data_cfg,
                           TrainConfig(epochs=args.epochs, batch_size=100, lr=1e-3, device=args.device, **kw))
        curve, clock = [], [0.0]

        def estimate(record, model, curve=curve, clock=clock, name=name):
            clock[0] += record["seconds"]
            with torch.random.fork_rng():
                torch.manual_seed(0)
                r = log_likelihood(model, test.to(model.device), k=args.eval_k)
            curve.append({"epoch": record["epoch"], "train_seconds": clock[0], "nll": r["nll"], "nll_se": r["nll_se"]})
            print(f"{name}: epoch {record['epoch']}  {clock[0]:.0f} s  -log p(x) {r['nll']:.2f}", flush=True)

        run_dir = RESULTS / f"runs-{args.name}" / name.replace(" ", "-").replace(":", "-")
        shutil.rmtree(run_dir, ignore_errors=True)
        fit(config, run_dir, data=data, hooks=[estimate], progress=False, log=lambda s: None)
        curves[name] = curve
        best = min(curve, key=lambda c: c["nll"])
        rows.append({"schedule": name, "epochs": args.epochs, "train_minutes": curve[-1]["train_seconds"] / 60,
                     "nll": curve[-1]["nll"], "nll_se": curve[-1]["nll_se"],
                     "nll_epoch_10": curve[min(9, len(curve) - 1)]["nll"], "best_nll": best["nll"]})
    md = write(args.name, {"protocol": "dynamic MNIST, 784-200-200-50 tanh VAE, batch 100, Adam 1e-3",
                           "eval_k": args.eval_k, "eval_n": args.eval_n, "curves": curves}, rows,
               ["schedule", "epochs", "train_minutes", "nll", "nll_se", "nll_epoch_10", "best_nll"])
    print(md.read_text())


if __name__ == "__main__":
    main()
