"""Kill training at random moments with SIGKILL, resume each time, and compare with a run never killed.

For each precision: one uninterrupted reference run, then the same run started and SIGKILLed KILLS times at
random moments (during epochs, between them, and every third one while a checkpoint is being written),
resumed after each kill, then let
finish. After every kill the run directory must load (config, weights, trainer state); at the end its
weights and metrics.jsonl must equal the reference bit for bit (timings aside). Mid-epoch checkpoints are
frequent (--checkpoint-every 0.002 minutes), so most kills land mid-epoch.

    VAEKIT_DATA=../shared/datasets python benchmarks/crash.py        # writes benchmarks/results/crash.{json,md}
Kept out of CI: about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

from vaekit.store.checkpoint import has_checkpoint, load_model, load_trainer_state

RESULTS = Path(__file__).resolve().parent / "results"
TIMING = ("seconds", "images_per_s")


def command(run: Path, precision: str, epochs: int, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, "-m", "vaekit", "train", "--resume", str(run), "--no-report", "--no-progress"]
    return [sys.executable, "-m", "vaekit", "train", "--run-dir", str(run), "--data", "mnist",
            "--latent-dim", "20", "--hidden", "400", "--epochs", str(epochs), "--batch-size", "128",
            "--precision", precision, "--checkpoint-every", "0.002", "--no-report", "--no-progress"]


def writing(run: Path, since: float) -> bool:
    """A checkpoint write started after `since` is under way (its temporary folder is there)."""
    try:
        return (run / ".checkpoint.tmp").stat().st_mtime > since
    except FileNotFoundError:
        return False


def loadable(run: Path) -> bool:
    try:
        model, _, _ = load_model(run)
        load_trainer_state(run, torch.optim.Adam(model.parameters()))
        return True
    except Exception as e:  # noqa: BLE001  (any failure to load counts)
        print(f"  unloadable: {e}", flush=True)
        return False


def weights(run: Path) -> dict:
    with safe_open(str(run / "checkpoint" / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def run_precision(precision: str, kills: int, epochs: int, rng: random.Random, root: Path) -> dict:
    reference, crashed = root / f"reference-{precision}", root / f"crashed-{precision}"
    t0 = time.perf_counter()
    subprocess.run(command(reference, precision, epochs, False), check=True, stdout=subprocess.DEVNULL)
    reference_seconds = time.perf_counter() - t0
    killed = unloadable = mid_epoch = mid_write = 0
    while True:
        resume = has_checkpoint(crashed)
        proc = subprocess.Popen(command(crashed, precision, epochs, resume), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        launched = time.time()
        if killed < kills:
            try:
                proc.wait(timeout=rng.uniform(1.5, 5.0))   # imports take ~2 s; an epoch 1-2 s
            except subprocess.TimeoutExpired:
                if killed % 3 == 2:   # every third kill aimed at a checkpoint write: wait until one is under way
                    while proc.poll() is None and not writing(crashed, launched):
                        time.sleep(0.0005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
                mid_write += writing(crashed, launched) or (crashed / ".checkpoint.old").exists()
                ok = not has_checkpoint(crashed) or loadable(crashed)
                unloadable += not ok
                if ok and has_checkpoint(crashed):
                    with safe_open(str(crashed / "checkpoint" / "trainer.safetensors"), "pt") as f:
                        mid_epoch += bool(json.loads(f.metadata()["state"]).get("step"))
                print(f"  {precision}: kill {killed}: {'loadable' if ok else 'UNLOADABLE'}", flush=True)
                continue
        if proc.wait() != 0:
            raise SystemExit(f"training failed: {proc.stderr.read()}")
        break
    same_weights = all(torch.equal(a, b) for a, b in zip(weights(reference).values(), weights(crashed).values(), strict=True))
    same_metrics = metrics(reference) == metrics(crashed)
    return {"precision": precision, "kills": killed, "kills_at_a_mid_epoch_checkpoint": mid_epoch,
            "kills_during_a_checkpoint_write": mid_write, "unloadable": unloadable,
            "weights_bit_identical": same_weights, "metrics_identical": same_metrics, "epochs": epochs,
            "reference_seconds": round(reference_seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng, t0 = random.Random(args.seed), time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="vaekit-crash-"))
    try:
        rows = [run_precision(prec, args.kills, args.epochs, rng, root) for prec in args.precision]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "crash.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| precision | SIGKILLs | resumed from a mid-epoch checkpoint | killed during a checkpoint write | unloadable after a kill "
             "| final weights bit-identical | metrics identical |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['precision']} | {r['kills']} | {r['kills_at_a_mid_epoch_checkpoint']} | "
              f"{r['kills_during_a_checkpoint_write']} | {r['unloadable']} | "
              f"{'yes' if r['weights_bit_identical'] else 'NO'} | {'yes' if r['metrics_identical'] else 'NO'} |" for r in rows]
    (RESULTS / "crash.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
