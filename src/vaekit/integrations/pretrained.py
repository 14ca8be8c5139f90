"""Hugging Face-style model folders: save_pretrained(run, dir), from_pretrained(dir or repo id), push_to_hub.

A folder holds model.safetensors (the weights; the epoch in its metadata), config.json (the run's RunConfig, the
same file `vaekit train --config` reads to train it again), samples.png and README.md, a model card with the
run's metrics and the command that trains it. These are the hub's conventions for a PyTorch model (weights in
model.safetensors beside config.json, the card in README.md), so `huggingface_hub` uploads and downloads the
folder as it is. Loading reads JSON and safetensors only: whatever else a folder holds (a pickle, a .py file)
is never opened, so loading never runs code from it. Loading by repo id and pushing need the `hub` extra:
pip install 'vaekit[hub]'.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..config.schema import RunConfig
from ..errors import CheckpointError, ConfigError, in_one_line
from ..files import atomic_write_text, new_folder
from ..models.family import build_model
from ..outputs.images import image_grid, save_png
from ..plugins import check_loaded
from ..store.checkpoint import FORMAT, _read, _weights, check_finite, has_checkpoint, load_model, load_state, save_tensors
from ..store.metrics import read_metrics

WEIGHTS, CONFIG, CARD, SAMPLES = "model.safetensors", "config.json", "README.md", "samples.png"
FILES = (WEIGHTS, CONFIG, CARD, SAMPLES)   # all that is written, uploaded and downloaded


def save_pretrained(run: str | Path, out: str | Path, checkpoint: str = "last") -> Path:
    """Write RUN's weights (last or best), config, a sample grid and a model card into the new folder OUT."""
    model, config, epoch = load_model(Path(run), "cpu", checkpoint)
    with new_folder(out, "model") as tmp:
        save_tensors(_weights(model), tmp / WEIGHTS, {"format": FORMAT, "epoch": str(epoch), "model": config.model.model,
                                              "folder": "pretrained"})
        atomic_write_text(tmp / CONFIG, json.dumps(shareable(config), indent=2) + "\n")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            images = model.generate(64)
        if images.dim() == 4:
            save_png(image_grid(images.float().cpu()), tmp / SAMPLES, scale=2)
        atomic_write_text(tmp / CARD, model_card(Path(run), config, epoch, (tmp / SAMPLES).exists()))
    return Path(out)


def shareable(config: RunConfig) -> dict:
    """The run's config as a folder to share holds it: nothing about the machine it was trained on (the data file's
    folder, the dataset cache), only the data file's name."""
    d = config.to_dict()
    d["data"]["path"] = Path(d["data"]["path"]).name if d["data"]["path"] else None
    d["data"]["data_dir"] = None
    return d


def model_card(run: Path, config: RunConfig, epoch: int, samples: bool) -> str:
    metrics = read_metrics(run)
    last = metrics[-1] if metrics else {}
    numbers = "\n".join(f"| {k} | {v:.4g} |" for k, v in last.items() if isinstance(v, float))
    m = config.model
    tags = "\n".join(f"- {tag}" for tag in dict.fromkeys(("vae", m.model, config.data.source)))   # each once
    return f"""---
library_name: vaekit
tags:
{tags}
---

# {m.model} on {config.data.source}

A vaekit model: `{m.model}`, latent_dim {m.latent_dim}, prior `{m.prior}`, posterior `{m.posterior}`, likelihood
`{m.likelihood}`, architecture `{m.arch}` {list(m.hidden_dims)}; trained {epoch} epochs ({config.train.loss} loss).

```python
import vaekit
model = vaekit.from_pretrained("THIS_FOLDER_OR_REPO_ID")
images = model.generate(16)
```

Train it again: `vaekit train --config config.json` (this folder's config.json is the run's).

## Metrics of the last epoch (nats per example)

| metric | value |
| --- | --- |
{numbers}
{"" if not samples else chr(10) + "## Samples" + chr(10) + chr(10) + "![samples](samples.png)" + chr(10)}"""


def _hub():
    try:
        import huggingface_hub  # noqa: PLC0415
    except ImportError:
        raise ConfigError("loading by repo id and pushing need huggingface_hub: pip install 'vaekit[hub]'") from None
    return huggingface_hub


def from_pretrained(source: str | Path, device: str = "cpu", revision: str | None = None):
    """The model in a save_pretrained folder, or in a hub repository `owner/name` (downloaded with huggingface_hub,
    only the files vaekit writes), or in a run directory (its last checkpoint, as push_to_hub takes a run too); in
    eval mode, its RunConfig as `model.run_config`."""
    folder = Path(source)
    if folder.is_dir() and has_checkpoint(folder):
        model, config, _ = load_model(folder, device)
        model.run_config = config
        return model   # in eval mode, as load_model gives it
    if not folder.is_dir():
        if str(source).count("/") != 1 or str(source).startswith((".", "/")):
            raise CheckpointError(f"{source} is neither a folder nor a hub repo id (owner/name)")
        hub = _hub()
        try:
            folder = Path(hub.snapshot_download(str(source), revision=revision, allow_patterns=list(FILES)))
        except Exception as e:   # offline, an unknown or private repo, a bad revision: huggingface_hub's many errors
            raise CheckpointError(f"cannot download {source} from the Hugging Face hub ({in_one_line(e, 100)}); check "
                                  "the repo id, the revision and the connection (private repos: huggingface-cli login), "
                                  "or pass a local folder") from None
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{folder} has no {CONFIG} and {WEIGHTS}; pass a folder vaekit.save_pretrained wrote, "
                              "or a run directory")
    config = RunConfig.load(folder / CONFIG)   # JSON, never executed
    check_loaded(config.plugins, folder)
    model = build_model(config.model)
    tensors, _ = _read(folder / WEIGHTS)   # safetensors with vaekit's marker, else a one-line error
    load_state(model, tensors, folder, CONFIG)
    check_finite(model, folder)
    model.run_config = config
    return model.to(device).eval()


def push_to_hub(run_or_folder: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a save_pretrained folder (or a run, saved into one first) to the hub repository repo_id; its URL."""
    hub = _hub()
    source = Path(run_or_folder)
    with tempfile.TemporaryDirectory() as tmp:
        folder = source if (source / WEIGHTS).is_file() else save_pretrained(source, Path(tmp) / "model")
        api = hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=list(FILES))
    return str(getattr(info, "commit_url", info))

