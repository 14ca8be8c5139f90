"""RUN/report.html: a run's config, final metrics and every figure that applies to it, in one
self-contained page (PNGs embedded as base64 data URIs, inline CSS, no script, nothing fetched),
so it reads the same offline, attached to an e-mail or years later."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from ..errors import ConfigError
from ..files import atomic_write_bytes, atomic_write_text
from .plots import KINDS, PlotOptions, open_run, render

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1250px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; } td, th { padding: .25em .8em; border-bottom: 1px solid #e4e4e4; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; } figcaption { color: #555; margin-bottom: .4em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; } .muted { color: #666; }
"""


def _table(header: list[str], rows: list[list], table_id: str) -> str:
    def cell(v, tag="td"):
        if isinstance(v, float):
            return f'<{tag} class="num">{v:.2f}</{tag}>'
        return f"<{tag}>{html.escape(str(v))}</{tag}>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def metrics_columns(run) -> list[tuple[str, str]]:
    """(term, heading) of the metrics table: the objective and the reconstruction, and for a model with
    q(z|x) the KL and the plain -ELBO (which differs from the objective under beta or a schedule)."""
    columns = [("loss", f"objective ({run.config.train.loss})"), ("recon", "recon -log p(x|z)")]
    if run.uses_kl:
        columns += [("kl", "KL"), ("neg_elbo", "-ELBO")]
    return columns


def metrics_rows(run) -> list[list]:
    """[split, epoch, *terms] for the last epoch's train and validation means and the test set."""
    rows, columns = [], [k for k, _ in metrics_columns(run)]
    last = run.metrics[-1] if run.metrics else {}
    for split, name in (("train", "train (mean over the last epoch)"), ("val", "validation")):
        if f"{split}_loss" in last:
            values = [last.get(f"{split}_{k}", last[f"{split}_recon"] + last[f"{split}_kl"] if k == "neg_elbo" else None)
                      for k in columns]
            rows.append([name, last["epoch"], *(float(v) for v in values)])
    test = run.test_metrics
    rows.append([f"test ({len(run.test)} examples)", run.epoch, *(float(test[k]) for k in columns)])
    return rows


def extras_rows(run) -> list[list]:
    """[name, value] of the numbers the model adds to its evaluation (a VQ-VAE: codebook use and its bound)."""
    with run.seeded(0):
        extras = run.model.evaluation_extras(run.test)
    rows = []
    for group, values in extras.items():
        for k, v in (values.items() if isinstance(values, dict) else [("", values)]):
            rows.append([f"{group}: {k.replace('_', ' ')}" if k else group, float(v) if isinstance(v, float) else v])
    return rows


def report_html(run, figures: list[tuple[str, bytes]], skipped: list[tuple[str, str]]) -> str:
    """The page for an opened plots.Run, its figures (kind, PNG) and the kinds skipped (kind, reason)."""
    cfg = run.config.to_dict()
    config_rows = [[section, key, str(value)] for section, fields in cfg.items() for key, value in fields.items()]
    seconds = sum(r.get("seconds", 0.0) for r in run.metrics)
    speed = [r["images_per_s"] for r in run.metrics if "images_per_s" in r]
    precision = run.metrics[-1].get("precision") if run.metrics else None
    timing = (f"{len(run.metrics)} epochs in {seconds:.1f} s of training"
              + (f", {sum(speed) / len(speed):,.0f} training examples/s on average" if speed else "")
              + (f", precision {precision}" if precision else "")) if run.metrics else ""
    parts = [
        f"<h1>vaekit run {html.escape(run.name)}</h1>",
        (f'<p class="muted">{html.escape(str(run.dir))}: {html.escape(run.kind)}, latent_dim={run.latent_dim}, '
         f"trained on {html.escape(run.config.data.source)}. {html.escape(timing)}</p>"),
        "<h2>Final metrics</h2>",
        ('<p class="muted">In nats per example: the training objective, the reconstruction term'
         + (", the KL and the plain negative ELBO (reconstruction + KL)" if run.uses_kl else "")
         + "; test: z sampled as in training, seed 0, as <code>vaekit eval</code> reports it.</p>"),
        _table(["split", "epoch", *(h for _, h in metrics_columns(run))], metrics_rows(run), "metrics"),
    ]
    extras = extras_rows(run)
    if extras:
        parts += ["<h3>Test set: the model's own numbers</h3>", _table(["", "value"], extras, "extras")]
    parts.append("<h2>Figures</h2>")
    for kind, png in figures:
        width, height = Image.open(io.BytesIO(png)).size
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure id="fig-{kind}"><figcaption><b>{kind}</b>: {html.escape(KINDS[kind].about)}</figcaption>'
                     f'<img src="data:image/png;base64,{data}" alt="{kind}" width="{width}" height="{height}"></figure>')
    if skipped:
        items = "".join(f"<li><b>{kind}</b>: {html.escape(reason)}</li>" for kind, reason in skipped)
        parts.append(f"<h3>Not shown</h3><ul>{items}</ul>")
    parts += ["<h2>Config</h2>", _table(["section", "field", "value"], config_rows, "config")]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>vaekit run {html.escape(run.name)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_report(run_dir, out: str | Path | None = None, options: PlotOptions | None = None, *,
                 device: str = "cpu", data_dir: str | None = None, figures_dir: str | Path | None = None,
                 checkpoint: str = "last", allow_changed_data: bool = False, log=print) -> Path:
    """`vaekit report RUN`: write RUN/report.html (or `out`); with figures_dir, also each figure as a PNG there."""
    run = open_run(run_dir, device, data_dir, checkpoint, allow_changed_data)
    options = options or PlotOptions()
    run.check_options(options)
    out = Path(out) if out else run.dir / "report.html"
    if out.is_dir():
        raise ConfigError(f"out={str(out)!r} (--out) is a folder; give a file name such as {out / 'report.html'}")
    figures, skipped = [], []
    for kind in KINDS:
        png, reason = render(kind, [run], options)
        if png is None:
            skipped.append((kind, reason))
            continue
        figures.append((kind, png))
        if figures_dir is not None:
            Path(figures_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(Path(figures_dir) / f"{kind}.png", png)
    page = report_html(run, figures, skipped)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    if log:
        for kind, reason in skipped:
            log(f"report: skipped {kind}: {reason}")
        log(f"wrote {out}")
    return out
