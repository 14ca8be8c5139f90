"""Two versions of vaekit, the same commands, interleaved: did a change make anything a user runs slower?

    python benchmarks/ab.py --old /tmp/vaekit-old --rounds 5     # a checkout of the commit before, for example
        (git worktree add /tmp/vaekit-old HEAD~1)

Each round runs every command once with the old source tree first on PYTHONPATH, then once with this checkout's (the
order alternates from round to round), each a fresh process; the wall-clock seconds of each go into
benchmarks/results/ab.{json,md} with their medians and the ratio new / old, beside the CPU model, its measured
bf16 and fp32 matmul limits, the thread count and the load average before and after. VAEKIT_DATA must point at the
folder above mnist/.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import machine, write
from speed import matmul_gflops

HERE = Path(__file__).resolve().parents[1]
COMMANDS = {   # what a user runs; {d}: a fresh folder per run
    "import": "-c 'import vaekit'",
    "train --epochs 0 (fixed cost)": "-m vaekit train --run-dir {d}/r --epochs 0 --no-report",
    "train --preset mnist-fast --compile off": "-m vaekit train --preset mnist-fast --compile off --run-dir {d}/r --no-report",
    "train --preset mnist-fast --compile on (built)": "-m vaekit train --preset mnist-fast --compile on --run-dir {d}/r --no-report",
    "eval --nll-k 100": "-m vaekit eval {run} --nll-k 100",
}


def timed(source: Path, command: str, run: Path) -> float:
    with tempfile.TemporaryDirectory() as d:
        argv = shlex.split(command.format(d=d, run=run))
        env = {**os.environ, "PYTHONPATH": str(source / "src")}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *argv], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", type=Path, required=True, help="the other version's checkout (its src/ is put on PYTHONPATH)")
    p.add_argument("--new", type=Path, default=HERE, help="the version to compare (default: this checkout; a worktree "
                   "of a commit keeps the comparison steady while you edit this one)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", nargs="+", help="some of the commands (their names' first words)")
    args = p.parse_args()
    commands = {k: v for k, v in COMMANDS.items() if not args.only or any(k.startswith(o) for o in args.only)}
    limits = {"bf16_gflops": matmul_gflops(torch.bfloat16), "fp32_gflops": matmul_gflops(torch.float32)}
    load_before = os.getloadavg()
    keep = Path(tempfile.mkdtemp(prefix="vaekit-ab-"))
    run = keep / "run"   # a trained run for eval (trained once by this checkout; both versions read it)
    subprocess.run([sys.executable, "-m", "vaekit", "train", "--preset", "mnist-fast", "--epochs", "1", "--run-dir", str(run),
                    "--no-report", "--compile", "off"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(args.new / "src")})
    for source in (args.old, args.new):   # the compiled steps of both versions, built before the rounds
        if any("compile on" in k for k in commands):
            timed(source, COMMANDS["train --preset mnist-fast --compile on (built)"], run)
    seconds = {name: {"old": [], "new": []} for name in commands}
    for r in range(args.rounds):
        order = [("old", args.old), ("new", args.new)][:: 1 if r % 2 == 0 else -1]
        for name, command in commands.items():
            for label, source in order:
                seconds[name][label].append(timed(source, command, run))
        print(f"round {r + 1}: " + "; ".join(f"{n} {statistics.median(s['old']):.2f} / {statistics.median(s['new']):.2f} s"
                                            for n, s in seconds.items()), flush=True)
    rows = [{"command": name, "old s (median)": statistics.median(s["old"]), "new s (median)": statistics.median(s["new"]),
             "new / old": statistics.median(s["new"]) / statistics.median(s["old"]),
             "old each": " ".join(f"{v:.2f}" for v in s["old"]), "new each": " ".join(f"{v:.2f}" for v in s["new"])}
            for name, s in seconds.items()]
    payload = {"old": str(args.old), "new": str(args.new), "rounds": args.rounds, "limits": limits, "threads": torch.get_num_threads(),
               "load_before": load_before, "load_after": os.getloadavg(), "machine": machine()}
    out = write("ab", payload, rows, ["command", "old s (median)", "new s (median)", "new / old", "old each", "new each"])
    print(out.read_text())
    print(f"bf16 limit {limits['bf16_gflops']:.0f}, fp32 {limits['fp32_gflops']:.0f} GFLOP/s; {torch.get_num_threads()} "
          f"threads; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
