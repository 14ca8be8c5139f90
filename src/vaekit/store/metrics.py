"""RUN/metrics.jsonl: one JSON object per finished epoch, and the lines a run prints about it."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_text, parse_json

METRICS = "metrics.jsonl"
# keys of a record that are not numbers to print as extras (the rest of val_* beyond the loss terms are)
TERMS = ("loss", "recon", "kl", "neg_elbo")


# what a metrics line says of the machine it ran on, not of the run: a resumed run repeats every other number exactly
MACHINE_FIELDS = ("seconds", "images_per_s", "threads", "threads_used", "build_seconds")


def run_numbers(rows: list[dict]) -> list[dict]:
    """The metrics lines without MACHINE_FIELDS: what a run killed and resumed must repeat bit for bit."""
    return [{k: v for k, v in r.items() if k not in MACHINE_FIELDS} for r in rows]


def read_metrics(run_dir: Path, upto: int | None = None, log=None) -> list[dict]:
    """The records of RUN/metrics.jsonl (those of epochs <= upto). An append-only file may end torn (a full
    disk, a kill mid-write) or hold a garbled line: such lines are dropped, and reported to `log`."""
    path = Path(run_dir) / METRICS
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows, dropped = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and not isinstance(row["epoch"], bool):
            rows.append(row)
        else:
            dropped.append(number)
    if dropped and log:
        log(f"{path}: dropped {len(dropped)} unreadable line(s) (line {', '.join(map(str, dropped[:5]))}); "
            "the checkpoint, not this file, says where training stands")
    return rows if upto is None else [r for r in rows if r["epoch"] <= upto]


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def append_metric(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def summary(r: dict, epochs: int) -> str:
    """The line printed after each epoch."""
    line = (f"epoch {r['epoch']}/{epochs}  train {r['train_loss']:.2f} (recon {r['train_recon']:.2f}, "
            f"kl {r['train_kl']:.2f})")
    if "val_loss" in r:
        line += f"  val {r['val_loss']:.2f}"
        if abs(r.get("val_neg_elbo", r["val_loss"]) - r["val_loss"]) > 1e-6:
            line += f" (-ELBO {r['val_neg_elbo']:.2f})"
        extras = [f"{k[4:].replace('_', ' ')} {v:g}" for k, v in r.items() if k.startswith("val_") and k[4:] not in TERMS]
        if extras:
            line += f" ({', '.join(extras)})"
    return line + f"  {r['seconds']:.1f}s  {r['images_per_s']:.0f} img/s"
