"""Time one chunk of the compiled k = 5,000 likelihood estimate (vaekit.evaluation.evaluate's chunk: log w =
log p(x|z) + log p(z) - log q(z|x) and its sums over the samples) for `--images` images x `--samples`
samples, compiled as Inductor builds it and with vaekit's CPU graph rewrites
(src/vaekit/graph_rewrites.py); with --int8 also the bf16 graph with int8 products, the estimate's
`auto` precision where this CPU's int8 products are faster. Variants alternate, 7 rounds of 100
calls; medians reported, with the time they imply for 10,000 images x 5,000 samples. The weights
are the preset's initial ones unless --run names a trained run: the kernels' speed barely depends
on their values. --profile adds the last variant's time per kernel (torch.profiler, Inductor's
kernel profiling): where a chunk's time goes.

    python benchmarks/compiled_chunk.py            # iwae-paper decoder: results/compiled_chunk.{json,md}
    python benchmarks/compiled_chunk.py --preset mnist-fast --int8 --profile   # results/compiled_chunk-mnist-fast.*
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402
from vaekit import build_model  # noqa: E402
from vaekit.accel.graph_rewrites import compile_for_evaluation  # noqa: E402
from vaekit.config.presets import get_preset  # noqa: E402
from vaekit.evaluation.evaluate import _chunk_sums  # noqa: E402
from vaekit.models.objectives import posterior  # noqa: E402
from vaekit.runtime import autocast, keep_freed_memory  # noqa: E402
from vaekit.store.checkpoint import load_model  # noqa: E402

DIFF = "max abs diff of the chunk's log-sum-exp from eager fp32"


def variants(int8: bool) -> dict:
    """name -> (chunk function, autocast precision)."""
    out = {"inductor": (torch.compile(_chunk_sums), "fp32"),
           "inductor + vaekit rewrites": (compile_for_evaluation(_chunk_sums), "fp32")}
    if int8:
        out["bf16 + int8 products"] = (compile_for_evaluation(_chunk_sums, int8=True), "bf16")
    return out


def kernel_times(fn, precision: str, args: tuple, calls: int) -> list[dict]:
    """ms per call of each kernel and library call of `fn`, compiled afresh with Inductor's kernel profiling."""
    from torch.profiler import profile  # noqa: PLC0415
    torch._dynamo.reset()
    with inductor_config.patch({"cpp.enable_kernel_profile": True}), autocast(args[2].device, precision):
        fn(*args)
        with profile() as prof:
            for _ in range(calls):
                fn(*args)
    events = [e for e in prof.key_averages() if e.key.startswith(("graph_", "aten::")) and e.self_cpu_time_total > 0]
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"kernel": e.key[:90], "ms per call": e.self_cpu_time_total / 1e3 / calls} for e in events[:8]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="iwae-paper", help="the model whose decoder is timed")
    parser.add_argument("--run", help="a trained run of that kind: its weights instead of the initial ones")
    parser.add_argument("--images", type=int, default=1, help="images per chunk (the estimate: 4)")
    parser.add_argument("--samples", type=int, default=2_500, help="samples per image (rows = images x samples)")
    parser.add_argument("--int8", action="store_true", help="also the bf16 graph with int8 products")
    parser.add_argument("--profile", action="store_true", help="also the last variant's time per kernel")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    keep_freed_memory()   # as log_likelihood does
    model = (load_model(args.run)[0] if args.run else build_model(get_preset(args.preset).model)).eval()
    x = torch.bernoulli(torch.full((args.images, *model.config.input_shape), 0.13))
    rows_per_chunk = args.images * args.samples
    fns = variants(args.int8)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        q = posterior(model, x)
        eps = torch.randn(args.samples, *q.noise_shape)
        reference = _chunk_sums(model, q, x, eps)[0]
        results = {}
        for name, (fn, precision) in fns.items():   # compiles
            with autocast(x.device, precision):
                results[name] = fn(model, q, x, eps)[0]
        for _ in range(args.rounds):
            for name, (fn, precision) in fns.items():
                with autocast(x.device, precision):
                    t = time.perf_counter()
                    for _ in range(args.calls):
                        fn(model, q, x, eps)
                    times[name].append((time.perf_counter() - t) / args.calls)
        kernels = kernel_times(*fns[name], (model, q, x, eps), args.calls) if args.profile else []
    rows = []
    for name, ts in times.items():
        ms = statistics.median(ts) * 1e3
        rows.append({"graph": name, "ms per chunk": ms, "s per 10k x 5,000": ms * 5e7 / rows_per_chunk / 1e3,
                     DIFF: f"{(results[name] - reference).abs().max().item():.1e}"})
        print(f"{name}: {ms:.2f} ms per {rows_per_chunk}-row chunk -> {rows[-1]['s per 10k x 5,000']:.1f} s for 10,000 x "
              f"5,000 (max |diff| from eager fp32 {rows[-1][DIFF]})",
              flush=True)
    for k in kernels:
        print(f"  {name}, per call: {k['ms per call']:.3f} ms {k['kernel']}")
    out = write("compiled_chunk" if args.preset == "iwae-paper" and not args.run else f"compiled_chunk-{args.preset}",
                {"preset": args.preset, "run": args.run, "images": args.images, "samples": args.samples,
                 "rows_per_chunk": rows_per_chunk, "rounds": args.rounds, "calls": args.calls, "kernels": kernels},
                rows + [{"graph": f"{name}: {k['kernel']}", "ms per chunk": k["ms per call"]} for k in kernels],
                ["graph", "ms per chunk", "s per 10k x 5,000", DIFF])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
