"""Kill training at random moments with SIGKILL, resume each time, and compare with a run never killed.

For each case (a model and a precision: the VAE in fp32 and bf16, the VQ-VAE and the two-layer HVAE in fp32): one
uninterrupted reference run, then the same run started and SIGKILLed KILLS times at random moments (during epochs,
between them, every third one while a checkpoint is being written, and for the VQ-VAE every fourth one while its code
prior is fitted after the last epoch), resumed after each kill, then let finish. After every kill the run directory
must load (config, weights, trainer state); at the end its weights and metrics.jsonl must equal the reference bit
for bit (timings aside). Mid-epoch checkpoints are frequent (--checkpoint-every 0.002 minutes), so most kills land
mid-epoch.

    VAEKIT_DATA=../shared/datasets python benchmarks/crash.py        # writes benchmarks/results/crash.{json,md}
    python benchmarks/crash.py --cases vqvae:fp32 --kills 8           # one case
Kept out of CI: about 10 minutes on 2 cores.
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

from vaekit.models.family import build_model
from vaekit.store.checkpoint import has_checkpoint, load_config, load_trainer_state, load_weights
from vaekit.store.metrics import run_numbers

RESULTS = Path(__file__).resolve().parent / "results"
# each model's flags and epochs: the README's MNIST VAE; a VQ-VAE whose code prior (fitted after the last epoch) is
# killed too; the two-layer HVAE
MODELS = {"vae": (["--latent-dim", "20", "--hidden", "400"], 25),
          "vqvae": (["--model", "vqvae", "--latent-dim", "16", "--hidden", "256", "--prior-epochs", "6"], 8),
          "hvae": (["--model", "hvae", "--latent-dim", "20", "--hidden", "400"], 12)}
CASES = ("vae:fp32", "vae:bf16", "vqvae:fp32", "hvae:fp32")


def command(run: Path, model: str, precision: str, epochs: int, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, "-m", "vaekit", "train", "--resume", str(run), "--no-report", "--no-progress"]
    return [sys.executable, "-m", "vaekit", "train", "--run-dir", str(run), "--data", "mnist", *MODELS[model][0],
            "--epochs", str(epochs), "--batch-size", "128", "--precision", precision, "--checkpoint-every", "0.002",
            "--no-report", "--no-progress"]


def after_training(run: Path, epochs: int) -> bool:
    """The last epoch is saved and the model's work after training (a VQ-VAE's code prior) is under way."""
    try:
        with safe_open(str(run / "checkpoint" / "model.safetensors"), "pt") as f:
            meta = f.metadata()
        return meta.get("epoch") == str(epochs) and meta.get("after_training") == "pending"
    except Exception:  # noqa: BLE001  (mid-swap, or not written yet)
        return False


def writing(run: Path, since: float) -> bool:
    """A checkpoint write started after `since` is under way (its temporary folder is there)."""
    try:
        return (run / ".checkpoint.tmp").stat().st_mtime > since
    except FileNotFoundError:
        return False


def loadable(run: Path) -> bool:
    try:   # what a resume loads: config, weights (also those whose work after training is pending), trainer state
        model = build_model(load_config(run).model)
        load_weights(run, model)
        load_trainer_state(run, torch.optim.Adam(model.parameters()))
        return True
    except Exception as e:  # noqa: BLE001  (any failure to load counts)
        print(f"  unloadable: {e}", flush=True)
        return False


def weights(run: Path) -> dict:
    with safe_open(str(run / "checkpoint" / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def metrics(run: Path) -> list[dict]:
    return run_numbers([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()])


def run_case(case: str, kills: int, rng: random.Random, root: Path) -> dict:
    model, precision = case.split(":")
    epochs = MODELS[model][1]
    reference, crashed = root / f"reference-{model}-{precision}", root / f"crashed-{model}-{precision}"
    t0 = time.perf_counter()
    subprocess.run(command(reference, model, precision, epochs, False), check=True, stdout=subprocess.DEVNULL)
    reference_seconds = time.perf_counter() - t0
    killed = unloadable = mid_epoch = mid_write = mid_after = 0
    while True:
        resume = has_checkpoint(crashed)
        proc = subprocess.Popen(command(crashed, model, precision, epochs, resume), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        launched = time.time()
        if killed < kills:
            try:
                proc.wait(timeout=rng.uniform(1.5, 5.0))   # imports take ~2 s; an epoch 1-2 s
            except subprocess.TimeoutExpired:
                if model == "vqvae" and killed % 4 == 3:   # aimed at the code prior's fit, after the last epoch
                    while proc.poll() is None and not after_training(crashed, epochs):
                        time.sleep(0.01)
                    time.sleep(rng.uniform(0.0, 1.0))
                elif killed % 3 == 2:   # aimed at a checkpoint write: wait until one is under way
                    while proc.poll() is None and not writing(crashed, launched):
                        time.sleep(0.0005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
                mid_write += writing(crashed, launched) or (crashed / ".checkpoint.old").exists()
                mid_after += after_training(crashed, epochs)
                ok = not has_checkpoint(crashed) or loadable(crashed)
                unloadable += not ok
                if ok and has_checkpoint(crashed):
                    with safe_open(str(crashed / "checkpoint" / "trainer.safetensors"), "pt") as f:
                        mid_epoch += bool(json.loads(f.metadata()["state"]).get("step"))
                print(f"  {case}: kill {killed}: {'loadable' if ok else 'UNLOADABLE'}", flush=True)
                continue
        if proc.wait() != 0:
            raise SystemExit(f"training failed: {proc.stderr.read()}")
        break
    same_weights = all(torch.equal(a, b) for a, b in zip(weights(reference).values(), weights(crashed).values(), strict=True))
    same_metrics = metrics(reference) == metrics(crashed)
    return {"model": model, "precision": precision, "kills": killed, "kills_during_the_work_after_training": mid_after,
            "kills_at_a_mid_epoch_checkpoint": mid_epoch,
            "kills_during_a_checkpoint_write": mid_write, "unloadable": unloadable,
            "weights_bit_identical": same_weights, "metrics_identical": same_metrics, "epochs": epochs,
            "reference_seconds": round(reference_seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--cases", nargs="+", default=list(CASES), help="MODEL:PRECISION (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng, t0 = random.Random(args.seed), time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="vaekit-crash-"))
    try:
        rows = [run_case(case, args.kills, rng, root) for case in args.cases]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "crash.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| model | precision | epochs | SIGKILLs | resumed from a mid-epoch checkpoint | killed during a checkpoint write "
             "| killed during the work after training | unloadable after a kill | final weights bit-identical "
             "| metrics identical |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['epochs']} | {r['kills']} | {r['kills_at_a_mid_epoch_checkpoint']} | "
              f"{r['kills_during_a_checkpoint_write']} | {r['kills_during_the_work_after_training']} | {r['unloadable']} | "
              f"{'yes' if r['weights_bit_identical'] else 'NO'} | {'yes' if r['metrics_identical'] else 'NO'} |" for r in rows]
    (RESULTS / "crash.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
