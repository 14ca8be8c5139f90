"""Issue 13's GPU row: one epoch of the mnist-fast network (784-400-20, grey MNIST, BCE, Adam) over the 60,000
training images, target < 0.5 s on an H100. Trains `--epochs` epochs for each batch size and --compile setting
with `fit` on the GPU (the whole dataset on the device, as `vaekit train --device cuda` holds it) and reports
each epoch's training seconds per 60,000 images; the first epoch of a compiled run includes its compile.

Prepared for a session that the device tool lends a GPU (its 15 minutes are short; run this as one command):

    # here, once: the data travels inside the checkout, in a folder git ignores
    echo /.data/ >> .git/info/exclude; mkdir -p .data && cp -r ../shared/datasets/mnist .data/
    # the device tool: run(command="PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_epoch.py
    #                       --data-dir .data --out $OUT", carry=[".data"], timeout_s=420)

Also runs on a CPU (`--device cpu`, for checking the script). Writes OUT/gpu_epoch.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vaekit import fit, load_data
from vaekit.config.presets import get_preset

TARGET_S = 0.5   # one epoch over 60,000 images on an H100 (issue 13)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="a folder holding mnist/ (the IDX files)")
    p.add_argument("--out", default="benchmarks/results", help="where gpu_epoch.{json,md} go")
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    args = p.parse_args()
    preset = get_preset("mnist-fast")
    data_cfg = dataclasses.replace(preset.data, data_dir=args.data_dir)
    data = load_data(data_cfg)
    rows = []
    for compile_mode in args.compile:
        for batch in args.batch_sizes:
            train = dataclasses.replace(preset.train, epochs=args.epochs, batch_size=batch, batch_growth=(),
                                        device=args.device, compile=compile_mode)
            config = dataclasses.replace(preset, data=data_cfg, train=train)
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                result = fit(config, Path(d) / "run", data=data, progress=False, log=lambda line: None)
                wall = time.perf_counter() - t0
            per_epoch = [60_000 / r["images_per_s"] for r in result.history]   # training seconds per 60,000 images
            steady = per_epoch[1:] or per_epoch
            rows.append({"compile": compile_mode, "batch_size": batch, "epoch_seconds": per_epoch,
                         "steady_epoch_s": statistics.median(steady), "first_epoch_s": per_epoch[0],
                         "compiled": result.history[-1].get("compiled"), "precision": result.history[-1]["precision"],
                         "last_train_loss": result.history[-1]["train_loss"], "wall_s": wall})
            print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_epoch.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "target_s": TARGET_S,
                                                    "rows": rows}, indent=2) + "\n")
    lines = [f"One epoch of mnist-fast's network over 60,000 images on {device} (torch {torch.__version__}); "
             f"target < {TARGET_S} s on an H100.", "",
             "| --compile | batch | seconds per epoch (each; the first includes a compile) | steady (median after the first) | "
             "precision |", "|---|---|---|---|---|"]
    lines += [f"| {r['compile']} | {r['batch_size']} | {', '.join(f'{s:.3f}' for s in r['epoch_seconds'])} | "
              f"**{r['steady_epoch_s']:.3f}** | {r['precision']} |" for r in rows]
    (out / "gpu_epoch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
