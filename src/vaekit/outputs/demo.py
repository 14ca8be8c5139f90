"""`vaekit demo`: the main job for a newcomer. Train a VAE on MNIST (or, offline without
MNIST, on scikit-learn's bundled 8x8 digits), evaluate it on the test set, write samples,
reconstructions, every figure of the latent space (figures/) and report.html into the run directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..config.presets import get_preset
from ..config.schema import RunConfig
from ..data.dataset import data_root, load_data
from ..errors import DataError
from ..evaluation.evaluate import evaluate
from ..files import atomic_write_text
from ..training.fit import fit
from .images import image_grid, save_png
from .report import write_report

# Which preset (vaekit.config.presets) the demo trains for each data source.
DEMO_PRESETS = {"mnist": "pytorch-examples", "digits": "digits"}


def run_demo(run_dir: str | Path = "runs/demo", epochs: int | None = None, source: str | None = None,
             data_dir: str | None = None, device: str = "auto", progress: bool | None = None, log=print) -> dict:
    """Train, evaluate, sample, draw the figures and the report; returns the test metrics.
    Falls back to digits if MNIST is unavailable."""
    run_dir = Path(run_dir)
    source = source or "mnist"
    config = get_preset(DEMO_PRESETS[source])
    data_cfg = dataclasses.replace(config.data, data_dir=data_dir)
    try:
        data = load_data(data_cfg, download_timeout=10)
    except DataError:
        if source != "mnist":
            raise
        log(f"MNIST is not in {data_root(data_dir) / 'mnist'} and could not be downloaded; the demo runs on the "
            "bundled 8x8 digits instead")
        source, config = "digits", get_preset(DEMO_PRESETS["digits"])
        data_cfg = config.data
        data = load_data(data_cfg)
    train_cfg = dataclasses.replace(config.train, device=device,
                                    epochs=epochs if epochs is not None else config.train.epochs)
    result = fit(RunConfig(config.model, data_cfg, train_cfg), run_dir, data=data, progress=progress, log=log)
    model = result.model
    test = data.test.to(model.device)
    torch.manual_seed(0)  # z is sampled: seed 0, as `vaekit eval` and the report use, so the numbers agree
    metrics = {"data": source, **evaluate(model, test, result.config.train)}
    torch.manual_seed(0)
    save_png(image_grid(model.generate(64)), run_dir / "samples.png", scale=2)
    first = test.head(16)
    pairs = torch.cat([first, model.reconstruct(first)])
    save_png(image_grid(pairs, nrow=16), run_dir / "reconstructions.png", scale=2)
    atomic_write_text(run_dir / "test_metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(run_dir, figures_dir=run_dir / "figures", device=device, data_dir=data_dir, log=None)
    log(f"test negative ELBO {metrics['neg_elbo']:.2f} nats/image (recon {metrics['recon']:.2f}, kl {metrics['kl']:.2f}); "
        f"samples.png, reconstructions.png, figures/ and report.html written to {run_dir}; move through its latent "
        f"space with `vaekit explore {run_dir}`")
    return metrics
