"""Shared by the benchmark scripts: machine description and result writing (JSON + markdown)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def conditions(peaks: dict | None = None) -> str:
    """What a speed number needs beside it: the CPU, its matmul peaks measured in the same run, the threads and the
    load average now. Warns (on stderr) when the load is above 0.5 per core: the numbers are then the machine's
    other work as much as vaekit's."""
    m, load = machine(), os.getloadavg()
    if load[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load[0]:.2f} on {os.cpu_count()} cores (it counts this benchmark's own runs of "
              "the last minutes too): other work may be running, and the timings will show it; quote them only with "
              "this load beside them", file=sys.stderr, flush=True)
    peak = ", ".join(f"{k.split('_')[0]} {v:.0f}" for k, v in (peaks or {}).items())
    return (f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} threads"
            + (f", matmul peak {peak} GFLOP/s" if peak else "") + f", load average {load[0]:.2f}, torch {m['torch']}, {m['date']}")


def write(name: str, payload: dict, table: list[dict], columns: list[str]) -> Path:
    """Write results/<name>.json and results/<name>.md (a markdown table of `columns`)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**payload, "rows": table, "machine": machine()}, indent=2) + "\n")
    fmt = lambda v: (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}") if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in table]
    m = machine()
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}" + (f", GPU {m['gpu']}" if m["gpu"] else "") + f", {m['date']}."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    return RESULTS / f"{name}.md"
