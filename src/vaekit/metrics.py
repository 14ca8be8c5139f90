"""RUN/metrics.jsonl: one JSON object per finished epoch, and the lines a run prints about it."""

from __future__ import annotations

import json
from pathlib import Path

from .files import atomic_write_text

METRICS = "metrics.jsonl"
# keys of a record that are not numbers to print as extras (the rest of val_* beyond the loss terms are)
TERMS = ("loss", "recon", "kl", "neg_elbo")


def read_metrics(run_dir: Path, upto: int | None = None) -> list[dict]:
    """The records of RUN/metrics.jsonl (those of epochs <= upto)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
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
