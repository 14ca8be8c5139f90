"""Peak resident memory of training on data larger than it should copy: 100,000 images of 3 x 64 x 64 (8-bit,
1.2 GB), trained for one epoch from the .npy in memory, and from the same images written by `vaekit prepare`
(read a batch at a time) with 1 and 2 processes. Peak RSS is the largest of the command's processes
(getrusage of the children), so with 2 processes it is one process's peak.

    VAEKIT_DATA=../shared/datasets python benchmarks/prepared.py     # writes benchmarks/results/prepared.{json,md}
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import write  # noqa: E402

TRAIN = ["--epochs", "1", "--hidden", "256", "--latent-dim", "16", "--batch-size", "256", "--no-report", "--no-progress"]


def peak_of(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB of the largest process) of a command run in a fresh child process."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--side", type=int, default=64, help="images are 3 x side x side")
    args = p.parse_args()
    vaekit = [sys.executable, "-m", "vaekit"]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        g = np.random.default_rng(0)
        x = g.integers(0, 256, (args.n, 3, args.side, args.side), dtype=np.uint8)
        np.save(d / "images.npy", x)
        size_mb = x.nbytes / 1e6
        del x
        t0 = time.perf_counter()
        subprocess.run([*vaekit, "prepare", "--data", "npy", "--path", str(d / "images.npy"), "--out", str(d / "prepared")],
                       check=True, stdout=subprocess.DEVNULL)
        prepare_s = time.perf_counter() - t0
        rows = []
        cases = [("in memory (--data npy)", ["--data", "npy", "--path", str(d / "images.npy")], 1),
                 ("prepared, 1 process", ["--data", "prepared", "--path", str(d / "prepared")], 1),
                 ("prepared, 2 processes", ["--data", "prepared", "--path", str(d / "prepared")], 2)]
        for i, (name, data, nproc) in enumerate(cases):
            seconds, peak = peak_of([*vaekit, "train", *data, *TRAIN, "--nproc", str(nproc), "--run-dir", str(d / f"run{i}")])
            metrics = [json.loads(line) for line in (d / f"run{i}" / "metrics.jsonl").read_text().splitlines()]
            rows.append({"data": name, "processes": nproc, "peak_rss_mb": peak, "peak_over_file": peak / size_mb,
                         "seconds": seconds, "images_per_s": metrics[-1]["images_per_s"]})
            print(rows[-1], flush=True)
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = write("prepared", {"images": args.n, "file_mb": size_mb, "prepare_seconds": prepare_s, "benchmark_rss_mb": own},
                 rows, ["data", "processes", "peak_rss_mb", "peak_over_file", "seconds", "images_per_s"])
    print(f"{args.n:,} images, {size_mb:,.0f} MB; vaekit prepare took {prepare_s:.1f} s")
    print(path.read_text())


if __name__ == "__main__":
    main()
