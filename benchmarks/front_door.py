"""The README's front-door timings on this machine: `vaekit demo`, the pytorch/examples VAE (`vaekit train`, 10
epochs) with its test -ELBO, and `--preset mnist-fast --compile on` twice from an empty step cache (the first run
builds its training step ahead of time, the second loads it). Each is a fresh `vaekit` process timed from start to
exit; beside the numbers: the CPU, its bf16 and fp32 matmul peaks measured in the same run, the threads and the load
average before and after (a warning when it is above 0.5 per core).

    VAEKIT_DATA=../shared/datasets python benchmarks/front_door.py   # writes benchmarks/results/front_door.{json,md}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import conditions, write
from speed import matmul_gflops


def timed(args: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vaekit", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"vaekit {' '.join(args)} failed: {done.stderr.strip()[-300:]}")
    return time.perf_counter() - t0, done.stdout


def main() -> None:
    peaks = {"bf16_gflops": matmul_gflops(torch.bfloat16), "fp32_gflops": matmul_gflops(torch.float32)}
    before = conditions(peaks)
    print(f"before: {before}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "VAEKIT_CACHE": f"{d}/cache"}   # an empty step cache: the first compiled run builds
        seconds, _ = timed(["demo", "--run-dir", f"{d}/demo"], env)
        rows.append({"command": "vaekit demo", "seconds": seconds, "result": "MNIST, 10 epochs, eval, samples, report"})
        seconds, _ = timed(["train", "--run-dir", f"{d}/vae20", "--no-report", "--no-progress"], env)
        _, out = timed(["eval", f"{d}/vae20", "--json"], env)
        rows.append({"command": "vaekit train (pytorch/examples VAE, 10 epochs)", "seconds": seconds,
                     "result": f"test -ELBO {json.loads(out)['neg_elbo']:.2f}"})
        for what in ("builds its step", "loads it"):
            seconds, _ = timed(["train", "--preset", "mnist-fast", "--compile", "on", "--run-dir", f"{d}/fast-{what[0]}",
                                "--no-report", "--no-progress"], env)
            _, out = timed(["eval", f"{d}/fast-{what[0]}", "--json"], env)
            rows.append({"command": f"vaekit train --preset mnist-fast --compile on ({what})", "seconds": seconds,
                         "result": f"test -ELBO {json.loads(out)['neg_elbo']:.2f}"})
            print(rows[-1], flush=True)
    after = conditions(peaks)
    out = write("front_door", {"peaks": peaks, "before": before, "after": after}, rows, ["command", "seconds", "result"])
    print(out.read_text())
    print(f"after: {after}")


if __name__ == "__main__":
    os.environ.setdefault("VAEKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    main()
