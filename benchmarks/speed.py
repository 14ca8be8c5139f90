"""vaekit against pythae and the textbook loop on one machine, interleaved (docs/performance.md).

Contestants, each a fresh process on grey MNIST with the pytorch/examples network (784-400-20 ReLU MLP, BCE):
- vaekit: `vaekit train --preset mnist-fast --compile on` (its own recipe for the least time to the target), which
  takes the training step compiled ahead of time (vaekit.accel.aot): built beforehand, once, by `--compile on` runs
  at 2 threads and at 1 (the thread count a busy machine gets), whose time is reported as the one-time cost; and the
  same recipe with `--compile off` (the eager step).
- pythae: its VAE and BaseTrainer (run in its own venv: pythae is not a vaekit dependency), batch 256, lr 2e-3,
  the test set as its eval set, stopped at the first epoch whose eval loss reaches the target.
- textbook: the pytorch/examples loop (benchmarks/peers/textbook.py: batch 128, Adam 1e-3), also stopped there.

Columns: the time from the command's start to the end of the training that reaches test -ELBO <= TARGET (the
peers' per-epoch test pass is left out of their clock; vaekit's test -ELBO is scored after its run, unclocked),
training images/s (median over epochs; vaekit's also by batch size, where its recipe grows the batch) and that
as % of the bf16 and the fp32 matmul limit measured at the start of this run (2048^2 products), images/s with
another process spinning on one core and its ratio to idle, and
vaekit's fixed cost (`vaekit train --epochs 0` less `python -c "import torch"`). Last, the k = 5,000 likelihood:
pythae's get_nll on 100 test images against vaekit's estimate on a quarter of the 10,000, alternated four times
(the ratio of their seconds per image, median of the rounds), on the same weights (vaekit's, copied into
pythae's model), and the two estimates on the same 100 images.

    VAEKIT_DATA=../shared/datasets python benchmarks/speed.py [--pythae-python PATH]   # results/speed.{json,md}

Without --pythae-python it makes benchmarks/.venv-pythae (pip install torch==2.13.0 pythae) the first time.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import conditions  # noqa: E402

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
RESULTS = HERE / "results"
TARGET = 105.6                      # pytorch/examples' published test -ELBO after 10 epochs
FLOPS_PER_IMAGE = 3 * 2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)   # forward + backward (2x), multiply-adds x2


def pythae_python(given: str | None) -> str:
    if given:
        return given
    venv = HERE / ".venv-pythae"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)   # the CPU wheel first
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pythae"], check=True)
    return str(python)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, rounds: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


class Hog:
    """Another process spinning on one core while the block runs (or nothing, when busy is False)."""

    def __init__(self, busy: bool):
        self.busy = busy

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if self.busy else None
        time.sleep(0.3 if self.busy else 0)
        return self

    def __exit__(self, *exc):
        if self.p is not None:
            self.p.kill()
            self.p.wait()


def run_vaekit(run_dir: Path, flags: list[str] = (), busy: bool = False, score: bool = True, skip_first: bool = False) -> dict:
    """`vaekit train --preset mnist-fast FLAGS`, clocked from the command's start: its images/s (median over epochs,
    and by batch size; skip_first: over the epochs after the first, whose time holds a compile) and, with score,
    its test -ELBO (scored after the clock)."""
    with Hog(busy):
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "vaekit", "train", "--preset", "mnist-fast", "--run-dir", str(run_dir),
                        "--no-report", "--no-progress", *flags], check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = rows[1:] if skip_first and len(rows) > 1 else rows
    sizes = sorted({r["batch_size"] for r in rows})   # the recipe may grow its batch (--batch-size-from)
    out = {"wall": wall, "images_per_s": statistics.median(r["images_per_s"] for r in rows), "epochs": len(rows),
           "ahead_of_time": [bool(r.get("ahead_of_time")) for r in rows],
           "images_per_s_by_batch_size": {b: statistics.median(r["images_per_s"] for r in rows if r["batch_size"] == b)
                                          for b in sizes}}
    if score:
        from vaekit.evaluation.evaluate import evaluate_run  # noqa: PLC0415  (after the clock: the test score is not timed)
        out["test_neg_elbo"] = evaluate_run(run_dir)["neg_elbo"]
        out["time_to_target"] = wall if out["test_neg_elbo"] <= TARGET else None
    return out


def run_peer(cmd: list[str], busy: bool = False) -> dict:
    with Hog(busy):
        t0 = time.time()
        done = subprocess.run(cmd, cwd=PEERS, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    hit = next((r for r in rows if r["test_neg_elbo"] <= TARGET), None)
    return {"images_per_s": statistics.median(r["images_per_s"] for r in rows), "epochs": len(rows),
            "test_neg_elbo": (hit or rows[-1])["test_neg_elbo"], "time_to_target": hit["t_end"] - t0 if hit else None}


def build_steps() -> dict:
    """`--compile on` runs of the preset, which build (once per machine, model and vaekit version) the steps compiled
    ahead of time that later runs load: at the default thread count (both batch sizes of the recipe) and at 1 thread
    (its first; what a run picks with a core busy). Their wall-clock seconds (little where already built)."""
    out = {}
    for name, flags in (("default threads", []), ("1 thread", ["--threads", "1", "--epochs", "1"])):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "vaekit", "train", "--preset", "mnist-fast", "--compile", "on",
                            "--run-dir", f"{d}/r", "--no-report", "--no-progress", *flags], check=True,
                           stdout=subprocess.DEVNULL)
            out[name] = time.time() - t0
    return out


def fixed_cost(rounds: int) -> dict:
    torch_s, vaekit_s = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        torch_s.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vaekit", "train", "--preset", "mnist-fast", "--epochs", "0",
                            "--run-dir", f"{d}/r", "--no-report"], check=True, stdout=subprocess.DEVNULL)
            vaekit_s.append(time.perf_counter() - t0)
    return {"import_torch_s": statistics.median(torch_s), "vaekit_epochs0_s": statistics.median(vaekit_s),
            "beyond_torch_s": statistics.median(vaekit_s) - statistics.median(torch_s)}


def likelihoods(run_dir: Path, python: str, n_pythae: int, k: int, rounds: int = 4) -> dict:
    """pythae's get_nll on n_pythae test images and vaekit's estimate on a 1/rounds share of the 10,000, alternated
    `rounds` times (the same machine load for both): the ratio of their seconds per image, round by round."""
    from vaekit.data.dataset import Dataset, load_run_data  # noqa: PLC0415
    from vaekit.evaluation.evaluate import log_likelihood  # noqa: PLC0415
    from vaekit.store.checkpoint import load_model  # noqa: PLC0415
    model, config, _ = load_model(run_dir)
    sd = model.state_dict()
    w = {"encoder.fc1.weight": sd["encoder.0.weight"], "encoder.fc1.bias": sd["encoder.0.bias"],
         "encoder.mu.weight": sd["encoder.2.weight"][:20], "encoder.mu.bias": sd["encoder.2.bias"][:20],
         "encoder.logvar.weight": sd["encoder.2.weight"][20:], "encoder.logvar.bias": sd["encoder.2.bias"][20:],
         "decoder.fc1.weight": sd["decoder.0.weight"], "decoder.fc1.bias": sd["decoder.0.bias"],
         "decoder.fc2.weight": sd["decoder.2.weight"], "decoder.fc2.bias": sd["decoder.2.bias"]}
    test = load_run_data(config.data).test
    torch.manual_seed(0)
    same = log_likelihood(model, Dataset(test.head(n_pythae)), k, precision="auto")   # as `vaekit eval --nll-k` runs it
    shares = [torch.arange(len(test))[r::rounds] for r in range(rounds)]   # every rounds-th image: alike in difficulty

    def share(r: int, precision: str) -> dict:   # vaekit's estimate on share r, its noise seeded by r
        torch.manual_seed(r)
        return log_likelihood(model, Dataset(test.take(shares[r])), k, precision=precision)

    pythae, vaekit = [], []
    with tempfile.TemporaryDirectory() as d:
        torch.save(w, f"{d}/w.pt")
        for r, rows in enumerate(shares):
            done = subprocess.run([python, "pythae_vae.py", "nll", "--weights", f"{d}/w.pt", "--n", str(n_pythae),
                                   "--k", str(k)], cwd=PEERS, check=True, capture_output=True, text=True)
            pythae.append(json.loads(done.stdout.splitlines()[-1]))
            vaekit.append(share(r, "auto"))
            print(f"likelihood round {r + 1}: pythae {pythae[-1]['seconds']:.1f} s for {n_pythae} images, vaekit "
                  f"{vaekit[-1]['seconds']:.1f} s for {len(rows)}", flush=True)
    each = [(p["seconds"] / n_pythae) / (v["seconds"] / len(rows)) for p, v, rows in zip(pythae, vaekit, shares, strict=True)]
    nll = torch.cat([v["per_example_nll"] for v in vaekit])
    seconds = sum(v["seconds"] for v in vaekit)
    pythae_s = statistics.median(p["seconds"] for p in pythae)
    out = {"k": k, "rounds": rounds, "pythae_images": n_pythae, "pythae_seconds": pythae_s,
           "pythae_seconds_each": [p["seconds"] for p in pythae], "pythae_seconds_10000": pythae_s * len(test) / n_pythae,
           "pythae_nll_same_images": pythae[0]["nll"], "vaekit_nll_same_images": same["nll"],
           "vaekit_nll_se_same_images": same["nll_se"], "vaekit_precision": vaekit[0]["precision"],
           "vaekit_seconds_10000": seconds, "vaekit_nll_10000": nll.mean().item(),
           "vaekit_nll_se_10000": (nll.std() / len(nll) ** 0.5).item(), "ratio": statistics.median(each),
           "ratio_each": each}
    # the opt-in int8 decoder products (--nll-precision int8), the same samples (compiled beforehand)
    log_likelihood(model, Dataset(test.head(n_pythae)), k, precision="int8")
    int8 = [share(r, "int8") for r in range(rounds)]
    int8_nll = torch.cat([b["per_example_nll"] for b in int8])
    out.update(int8_seconds_10000=sum(b["seconds"] for b in int8), int8_nll_10000=int8_nll.mean().item(),
               int8_ratio=statistics.median((p["seconds"] / n_pythae) / (b["seconds"] / len(rows))
                                            for p, b, rows in zip(pythae, int8, shares, strict=True)),
               paired_difference_se=float((int8_nll - nll).std() / len(nll) ** 0.5))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pythae-python", help="a python with pythae installed (default: make benchmarks/.venv-pythae)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the contestants")
    p.add_argument("--nll-images", type=int, default=100, help="test images for pythae's get_nll (scaled to 10,000)")
    p.add_argument("--skip-nll", action="store_true")
    args = p.parse_args()
    python = pythae_python(args.pythae_python)
    limits = {"bf16_gflops": matmul_gflops(torch.bfloat16), "fp32_gflops": matmul_gflops(torch.float32)}
    print(f"matmul limits: bf16 {limits['bf16_gflops']:.0f}, fp32 {limits['fp32_gflops']:.0f} GFLOP/s", flush=True)
    print(f"before: {conditions(limits)}", flush=True)   # warns when the machine is busy
    built = build_steps()
    print(f"the steps compiled ahead of time, built once: {built}", flush=True)
    contestants = {
        "vaekit (--preset mnist-fast --compile on)": lambda d, busy=False, short=False: run_vaekit(
            d / "v", ["--compile", "on", *(["--epochs", "1"] if short else [])], busy, score=not short),
        "vaekit (--preset mnist-fast --compile off)": lambda d, busy=False, short=False: run_vaekit(
            d / "v", ["--compile", "off", *(["--epochs", "1"] if short else [])], busy, score=not short),
        "pythae (batch 256, lr 2e-3)": lambda d, busy=False, short=False: run_peer(
            [python, "pythae_vae.py", "train", "--batch-size", "256", "--lr", "2e-3",
             *(["--epochs", "1"] if short else ["--epochs", "30", "--target", str(TARGET)])], busy),
        "textbook (pytorch/examples)": lambda d, busy=False, short=False: run_peer(
            [sys.executable, "textbook.py", *(["--epochs", "1"] if short else ["--epochs", "30", "--target", str(TARGET)])], busy),
    }
    runs = {name: [] for name in contestants}
    busy = {name: [] for name in contestants}
    keep = Path(tempfile.mkdtemp(prefix="vaekit-speed-"))
    for r in range(args.rounds):
        for name, run in contestants.items():
            d = keep / f"{r}-{len(runs[name])}-{list(contestants).index(name)}"
            d.mkdir()
            runs[name].append(run(d))
            print(f"{name:30s} {runs[name][-1]}", flush=True)
        for name, run in contestants.items():   # one epoch each with one core busy, then idle, interleaved
            d = keep / f"busy-{r}-{list(contestants).index(name)}"
            d.mkdir()
            hot, cold = run(d / "b", busy=True, short=True), run(d / "i", short=True)
            busy[name].append({"busy": hot["images_per_s"], "idle": cold["images_per_s"]})
            print(f"{name:30s} busy {hot['images_per_s']:.0f} idle {cold['images_per_s']:.0f} img/s", flush=True)
    fixed = fixed_cost(3)
    print(f"fixed cost: {fixed}", flush=True)
    vaekit_run = keep / f"{args.rounds - 1}-{args.rounds - 1}-0" / "v"   # the preset's last run
    nll = None if args.skip_nll else likelihoods(vaekit_run, python, args.nll_images, 5000)
    print(f"likelihood: {nll}", flush=True)
    rows = []
    for name in contestants:
        ttt = [x["time_to_target"] for x in runs[name]]
        ips = statistics.median(x["images_per_s"] for x in runs[name])
        rows.append({"contestant": name,
                     "time_to_target_s": statistics.median(ttt) if all(t is not None for t in ttt) else None,
                     "each_time_to_target_s": ttt, "test_neg_elbo": [round(x["test_neg_elbo"], 2) for x in runs[name]],
                     "epochs": [x["epochs"] for x in runs[name]], "images_per_s": ips,
                     "pct_bf16_limit": 100 * ips * FLOPS_PER_IMAGE / 1e9 / limits["bf16_gflops"],
                     "pct_fp32_limit": 100 * ips * FLOPS_PER_IMAGE / 1e9 / limits["fp32_gflops"],
                     "images_per_s_by_batch_size": _by_batch_size(runs[name]),
                     "busy_images_per_s": statistics.median(b["busy"] for b in busy[name]),
                     "busy_over_idle": statistics.median(b["busy"] / b["idle"] for b in busy[name]),
                     "ahead_of_time": [x.get("ahead_of_time") for x in runs[name]]})
    write(rows, limits, fixed, nll, built)


def _by_batch_size(runs: list[dict]) -> dict:
    """The median images/s of the runs' epochs at each batch size (vaekit's recipe only; {} for the peers)."""
    sizes = sorted({b for r in runs for b in r.get("images_per_s_by_batch_size", {})})
    return {b: statistics.median(r["images_per_s_by_batch_size"][b] for r in runs if b in r["images_per_s_by_batch_size"])
            for b in sizes}


def write(rows: list[dict], limits: dict, fixed: dict, nll: dict | None, built: dict) -> None:
    sys.path.insert(0, str(HERE))
    from common import machine  # noqa: PLC0415
    RESULTS.mkdir(exist_ok=True)
    payload = {"target": TARGET, "limits": limits, "fixed_cost": fixed, "likelihood": nll, "rows": rows,
               "steps_built_s": built, "machine": machine(), "load_average": os.getloadavg()}
    (RESULTS / "speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    pythae = next(r for r in rows if r["contestant"].startswith("pythae"))
    t = lambda v: "not reached" if v is None else f"{v:.1f}"   # noqa: E731
    lines = [f"| contestant | time to test -ELBO <= {TARGET} (s) | vs pythae (each round) | test -ELBO | images/s | % bf16 limit | "
             "% fp32 limit | images/s, one core busy | busy / idle |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:   # the ratio of the medians, then round by round (interleaved: the same machine load)
        each = [f"{a / b:.2f}" for a, b in zip(r["each_time_to_target_s"], pythae["each_time_to_target_s"], strict=True)
                if a is not None and b is not None]
        ratio = (f"{r['time_to_target_s'] / pythae['time_to_target_s']:.2f} ({', '.join(each)})"
                 if r["time_to_target_s"] and pythae["time_to_target_s"] else "")
        lines.append(f"| {r['contestant']} | {t(r['time_to_target_s'])} ({', '.join(t(v) for v in r['each_time_to_target_s'])}) | "
                     f"{ratio} | {', '.join(map(str, r['test_neg_elbo']))} | {r['images_per_s']:,.0f} | {r['pct_bf16_limit']:.0f}% | "
                     f"{r['pct_fp32_limit']:.0f}% | {r['busy_images_per_s']:,.0f} | {r['busy_over_idle']:.2f} |")
    lines += ["", f"Matmul limits measured in this run (2048^2): bf16 {limits['bf16_gflops']:.0f}, fp32 {limits['fp32_gflops']:.0f} GFLOP/s."]
    for r in rows:
        if len(r["images_per_s_by_batch_size"]) > 1:
            lines.append(f"{r['contestant']}, its epochs by batch size: " + ", ".join(
                f"{b}: {v:,.0f} images/s ({100 * v * FLOPS_PER_IMAGE / 1e9 / limits['bf16_gflops']:.0f}% of the bf16 limit)"
                for b, v in r["images_per_s_by_batch_size"].items()) + ".")
    for r in rows:
        if any(any(run or []) for run in r.get("ahead_of_time") or []):
            lines.append(f"{r['contestant']}: its epochs ran the step compiled ahead of time: "
                         f"{sum(map(all, r['ahead_of_time']))} of {len(r['ahead_of_time'])} runs throughout.")
    lines.append("The steps compiled ahead of time, built before the rounds by `--compile on` runs (once per machine, "
                 "model and vaekit version): " + ", ".join(f"{k} {v:.1f} s" for k, v in built.items()) + ".")
    lines += [
              f"vaekit's fixed cost: `vaekit train --epochs 0` {fixed['vaekit_epochs0_s']:.2f} s, `python -c \"import torch\"` "
              f"{fixed['import_torch_s']:.2f} s: {fixed['beyond_torch_s']:.2f} s beyond torch (medians of 3)."]
    if nll:
        lines.append(f"k = {nll['k']:,} likelihood, {nll['rounds']} alternating rounds: pythae's get_nll "
                     f"{nll['pythae_seconds']:.1f} s for {nll['pythae_images']} images (median; "
                     f"{nll['pythae_seconds_10000']:.0f} s scaled to 10,000); vaekit {nll['vaekit_seconds_10000']:.1f} s for all "
                     f"10,000 in {nll['rounds']} shares: {nll['ratio']:.1f}x per image (median of the rounds: "
                     f"{', '.join(f'{x:.1f}' for x in nll['ratio_each'])}). Same weights, same {nll['pythae_images']} images: pythae "
                     f"{nll['pythae_nll_same_images']:.2f}, vaekit {nll['vaekit_nll_same_images']:.2f} nats "
                     f"(vaekit on 10,000: {nll['vaekit_nll_10000']:.2f} +- {nll['vaekit_nll_se_10000']:.2f}, "
                     f"{nll['vaekit_precision']}).")
        if "int8_seconds_10000" in nll:
            lines.append(f"With the opt-in int8 products (`--nll-precision int8`), the same samples: "
                         f"{nll['int8_seconds_10000']:.1f} s, {nll['int8_ratio']:.1f}x pythae, {nll['int8_nll_10000']:.3f} "
                         f"nats (int8 - {nll['vaekit_precision']}: {nll['int8_nll_10000'] - nll['vaekit_nll_10000']:+.3f} "
                         f"+- {nll['paired_difference_se']:.3f} paired).")
    m = payload["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}; load average at the end "
                 f"{payload['load_average'][0]:.2f}.")
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
