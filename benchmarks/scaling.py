"""Training throughput with 1, 2, ... processes (torchrun through `vaekit train --nproc N`), interleaved.

Each run: `vaekit train --nproc N --epochs E` of the pytorch/examples VAE on MNIST (all 60,000 images, global
batch 256, the given precision), each process with CPUs / N threads (on GPUs: one GPU each). images/s is the
median over the run's epochs of the whole run's images per second of training, from metrics.jsonl.

    VAEKIT_DATA=../shared/datasets python benchmarks/scaling.py [--nprocs 1 2] [--rounds 2]
    # writes benchmarks/results/scaling.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import write  # noqa: E402


def run(nproc: int, epochs: int, precision: str, device: str) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // nproc)
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "vaekit", "train", "--nproc", str(nproc), "--run-dir", f"{d}/r", "--epochs", str(epochs),
               "--val-size", "0", "--batch-size", "256", "--precision", precision, "--device", device, "--threads",
               str(threads), "--no-report", "--no-progress"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        rows = [json.loads(line) for line in open(f"{d}/r/metrics.jsonl")]
    return {"images_per_s": statistics.median(r["images_per_s"] for r in rows), "threads_per_process": threads,
            "train_neg_elbo": rows[-1]["train_neg_elbo"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    results: dict[int, list[dict]] = {n: [] for n in args.nprocs}
    for _ in range(args.rounds):
        for n in args.nprocs:
            results[n].append(run(n, args.epochs, args.precision, args.device))
            print(f"{n} process(es): {results[n][-1]}", flush=True)
    base = statistics.median(r["images_per_s"] for r in results[args.nprocs[0]])
    table = []
    for n, rs in results.items():
        ips = statistics.median(r["images_per_s"] for r in rs)
        table.append({"processes": n, "threads_per_process": rs[0]["threads_per_process"], "images_per_s": ips,
                      "each_run": ", ".join(f"{r['images_per_s']:,.0f}" for r in rs), "speed-up": ips / base,
                      "train_neg_elbo": rs[-1]["train_neg_elbo"]})
    path = write("scaling", {"epochs": args.epochs, "precision": args.precision, "device": args.device}, table,
                 ["processes", "threads_per_process", "images_per_s", "each_run", "speed-up", "train_neg_elbo"])
    print(path.read_text())


if __name__ == "__main__":
    main()
