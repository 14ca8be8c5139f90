"""Training throughput on an idle and on a busy machine: fixed --threads 2 against the automatic choice.

"Busy" is another process spinning on one core for the whole run. Runs are interleaved, each
`vaekit train --epochs 3 --precision fp32` of the pytorch/examples VAE on MNIST; the median images/s of
its epochs and the threads it used come from metrics.jsonl.

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
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [("idle", "--threads 2", ["--threads", "2"], False), ("idle", "auto", [], False),
         ("one core busy", "--threads 2", ["--threads", "2"], True), ("one core busy", "auto", [], True)]


def run(flags: list[str], busy: bool, epochs: int) -> tuple[float, int]:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable, "-m", "vaekit", "train", "--run-dir", f"{d}/r", "--epochs", str(epochs),
                            "--no-report", "--precision", "fp32", *flags], check=True, stdout=subprocess.DEVNULL)
            rows = [json.loads(line) for line in open(f"{d}/r/metrics.jsonl")]
            return statistics.median(r["images_per_s"] for r in rows), rows[-1]["threads"]
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    results = {(machine, how): [] for machine, how, _, _ in CASES}
    for _ in range(args.repeats):
        for machine, how, flags, busy in CASES:
            ips, threads = run(flags, busy, args.epochs)
            results[(machine, how)].append({"images_per_s": ips, "threads": threads})
            print(f"{machine:14s} {how:12s} {ips:8.0f} img/s  {threads} thread(s)", flush=True)
    rows = [{"machine": m, "threads": h, "images_per_s": [r["images_per_s"] for r in v], "threads_used": v[-1]["threads"]}
            for (m, h), v in results.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| machine | threads | images/s (each run) | threads used |", "|---|---|---|---|"]
    lines += [f"| {r['machine']} | {r['threads']} | {', '.join(f'{v:,.0f}' for v in r['images_per_s'])} | {r['threads_used']} |"
              for r in rows]
    (RESULTS / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("VAEKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    main()
