"""Time one chunk of the compiled k = 5,000 likelihood estimate: log w = log p(x|z) + log p(z)
- log q(z|x) for `--rows` samples of one image through the iwae-paper decoder (50-200-200-784,
tanh), compiled as Inductor builds it and with vaekit's CPU graph rewrites
(src/vaekit/graph_rewrites.py). Variants alternate, 7 rounds of 100 calls; medians reported,
with the time they imply for 10,000 images x 5,000 samples (decoder rows / rows per chunk).
The weights are the preset's initial ones: the kernels' speed does not depend on their values.

    python benchmarks/compiled_chunk.py            # writes results/compiled_chunk.{json,md}
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402
from vaekit import build_model  # noqa: E402
from vaekit.graph_rewrites import compile_for_evaluation  # noqa: E402
from vaekit.objectives import posterior  # noqa: E402
from vaekit.presets import get_preset  # noqa: E402

_log_w = importlib.import_module("vaekit.evaluate")._log_w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_500, help="decoder rows per chunk (log_likelihood's max_rows)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(get_preset("iwae-paper").model).eval()
    x = torch.bernoulli(torch.full((1, *model.config.input_shape), 0.13))
    variants = {"inductor": torch.compile(_log_w), "inductor + vaekit rewrites": compile_for_evaluation(_log_w)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        q = posterior(model, x)
        eps = torch.randn(args.rows, 1, q.mu.shape[-1])
        results = {name: fn(model, q.mu, q.logvar, x, eps)[0] for name, fn in variants.items()}   # compiles
        for _ in range(args.rounds):
            for name, fn in variants.items():
                t = time.perf_counter()
                for _ in range(args.calls):
                    fn(model, q.mu, q.logvar, x, eps)
                times[name].append((time.perf_counter() - t) / args.calls)
    reference = _log_w(model, q.mu, q.logvar, x, eps)[0]
    rows = []
    for name, ts in times.items():
        ms = statistics.median(ts) * 1e3
        rows.append({"graph": name, "ms per chunk": ms, "s per 10k x 5,000": ms * 5e7 / args.rows / 1e3,
                     "max abs diff of log w from eager": f"{(results[name] - reference).abs().max().item():.1e}"})
        print(f"{name}: {ms:.2f} ms per {args.rows}-row chunk -> {rows[-1]['s per 10k x 5,000']:.0f} s "
              f"for 10,000 x 5,000 (max |diff| from eager {rows[-1]['max abs diff of log w from eager']})", flush=True)
    out = write("compiled_chunk", {"rows_per_chunk": args.rows, "rounds": args.rounds, "calls": args.calls}, rows,
                ["graph", "ms per chunk", "s per 10k x 5,000", "max abs diff of log w from eager"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
