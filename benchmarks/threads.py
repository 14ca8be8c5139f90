"""Training throughput on an idle machine, on a busy one, and on one that becomes busy mid-run: a fixed
`--threads 2` against the automatic choice (which follows the machine while training: vaekit.training.threads).

"Busy" is another process spinning on one core: for the whole run, or from the moment the run's first epoch is
written (the case that matters: a long run on a shared machine). Each run is `vaekit train --epochs E --limit N
--precision fp32` of the pytorch/examples VAE on MNIST; its images/s are the median over the epochs after the first (on the
idle machine too, so the cases compare like with like), with the threads each epoch used from metrics.jsonl. Runs
are interleaved; the CPU, its fp32 matmul peak (measured here), and the load average before and after are printed
and written with the table.

    VAEKIT_DATA=../shared/datasets python benchmarks/threads.py     # writes benchmarks/results/threads.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import machine, write
from speed import matmul_gflops

MACHINES = {"idle": None, "one core busy": "start", "busy from epoch 2": "mid-run"}
FLAGS = {"--threads 2": ["--threads", "2"], "auto": []}


def run(flags: list[str], hog_from: str | None, epochs: int, limit: int) -> dict:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if hog_from == "start" else None
    try:
        with tempfile.TemporaryDirectory() as d:
            metrics = Path(d) / "r" / "metrics.jsonl"
            train = subprocess.Popen([sys.executable, "-m", "vaekit", "train", "--run-dir", f"{d}/r", "--epochs",
                                      str(epochs), "--limit", str(limit), "--no-report", "--no-progress", "--precision",
                                      "fp32", *flags],
                                     stdout=subprocess.DEVNULL)
            while hog_from == "mid-run" and hog is None and train.poll() is None:
                if metrics.exists() and metrics.read_text().strip():
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(0.02)
            if train.wait() != 0:
                raise SystemExit("training failed")
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    later = rows[1:] or rows
    return {"images_per_s": statistics.median(r["images_per_s"] for r in later),
            "threads": [r.get("threads_used", [r["threads"]]) for r in rows]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=10_000, help="training examples per epoch (a busy --threads 2 run "
                   "trains at a few hundred images/s)")
    args = p.parse_args()
    load_before, peak = os.getloadavg(), matmul_gflops(torch.float32)
    results = {(m, f): [] for m in MACHINES for f in FLAGS}
    for _ in range(args.repeats):
        for m, hog_from in MACHINES.items():
            for f, flags in FLAGS.items():
                r = run(flags, hog_from, args.epochs, args.limit)
                results[(m, f)].append(r)
                print(f"{m:18s} {f:12s} {r['images_per_s']:8.0f} img/s  threads per epoch {r['threads']}", flush=True)
    idle = {f: statistics.median(r["images_per_s"] for r in results[("idle", f)]) for f in FLAGS}
    rows = [{"machine": m, "threads": f, "images/s (median)": statistics.median(r["images_per_s"] for r in v),
             "of the idle run": statistics.median(r["images_per_s"] for r in v) / idle[f],
             "each run": " ".join(f"{r['images_per_s']:.0f}" for r in v), "threads per epoch (last run)": str(v[-1]["threads"])}
            for (m, f), v in results.items()]
    payload = {"epochs": args.epochs, "limit": args.limit, "repeats": args.repeats, "fp32_matmul_gflops": peak, "load_before": load_before,
               "load_after": os.getloadavg()}
    out = write("threads", payload, rows, ["machine", "threads", "images/s (median)", "of the idle run", "each run",
                                           "threads per epoch (last run)"])
    print(out.read_text())
    print(f"{machine()['cpu']}: fp32 matmul peak {peak:.0f} GFLOP/s; load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    os.environ.setdefault("VAEKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    main()
