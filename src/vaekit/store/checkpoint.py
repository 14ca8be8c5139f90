"""Run directories: config.json + checkpoint/{model,trainer}.safetensors + best/model.safetensors + metrics.jsonl.

No pickle anywhere: weights, optimiser moments and RNG states are safetensors tensors, the
rest is JSON metadata. A checkpoint is written to a temporary folder, fsynced, and swapped in
with renames, so a crash at any moment leaves the previous complete checkpoint in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config.schema import CHECKPOINTS, RunConfig
from ..errors import CheckpointError, ConfigError, VaekitError
from ..files import file_mode, fsync_dir, fsync_file, parse_json
from ..models.family import build_model
from ..plugins import check_loaded
from ..runtime import resolve_device

FORMAT = "vaekit-checkpoint"
VERSION = "1"
CKPT, CKPT_OLD = "checkpoint", ".checkpoint.old"
BEST = "best"   # the weights of the epoch with the lowest validation loss


def non_finite(model: torch.nn.Module) -> list[str]:
    """The names of the weights and buffers that hold NaN or Inf."""
    return [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]


def weights_finite(model: torch.nn.Module) -> bool:
    return not non_finite(model)


def _write_folder(run_dir: Path, name: str, files: dict[str, tuple[dict, dict]]) -> None:
    """RUN/name/ holding safetensors files (file name -> (tensors, metadata)): written into .name.tmp, fsynced,
    and swapped in by two renames; between them .name.old is the complete previous folder."""
    run_dir = Path(run_dir)
    tmp, final, old = run_dir / f".{name}.tmp", run_dir / name, run_dir / f".{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for file_name, (tensors, meta) in files.items():
            save_tensors(tensors, tmp / file_name, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)   # a part-written folder must not keep the space a full disk lacks
        raise
    fsync_dir(tmp)
    if final.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    """safetensors' save_file, then the usual file mode (it creates 0600) and an fsync. Its I/O failures are raised
    as the OSError they are (safetensors reports a full disk as SafetensorError "... (os error 28)"), so the CLI
    says "the disk is full" as for every other write."""
    try:
        save_file(tensors, path, meta)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
    os.chmod(path, file_mode())
    fsync_file(path)


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CKPT).is_dir() or (Path(run_dir) / CKPT_OLD).is_dir()


def _checkpoint_dir(run_dir: Path) -> Path:
    """The newest complete checkpoint; after a crash mid-swap that is the old one."""
    run_dir = Path(run_dir)
    for name in (CKPT, CKPT_OLD):
        if (run_dir / name).is_dir():
            return run_dir / name
    raise CheckpointError(f"{run_dir} holds no checkpoint (no {CKPT}/ folder); is it a vaekit run directory?")


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Save weights, optimiser and trainer `state` (JSON scalars + tensors under state['tensors'])."""
    meta = _meta(state["epoch"], state.get("after_training_pending", False))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {**opt_tensors, **{f"state/{k}": v for k, v in state.get("tensors", {}).items()}}
    scalars = {k: v for k, v in state.items() if k != "tensors"}
    _write_folder(run_dir, CKPT, {
        "model.safetensors": (_weights(model), meta),
        "trainer.safetensors": (tensors, {**meta, "optimizer": json.dumps(opt_meta), "state": json.dumps(scalars)})})


def save_best(run_dir: Path, model: torch.nn.Module, epoch: int, pending: bool = False) -> None:
    """RUN/best/model.safetensors: the weights of `epoch`, swapped in as atomically as a checkpoint. pending: the
    model's work after training is still to do on them."""
    _write_folder(run_dir, BEST, {"model.safetensors": (_weights(model), _meta(epoch, pending))})


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _meta(epoch: int, pending: bool = False) -> dict[str, str]:
    return {"format": FORMAT, "version": VERSION, "epoch": str(epoch), **({"after_training": "pending"} if pending else {})}


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the run directory is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a vaekit checkpoint (no '{FORMAT}' marker); train with vaekit or pick another file")
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or unreadable ({e}); resume from another run or retrain") from None


SWAP_TRIES = 20   # a swap is two renames and a removal: microseconds; 20 tries 50 ms apart outlast a slow disk


def _read_newest(run_dir: Path, checkpoint: str, file_name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """_read of FILE in the newest complete folder of `checkpoint`. A trainer may swap that folder (checkpoint/ ->
    .checkpoint.old, the new one in, the old one removed) between the moment it is chosen and the moment it is
    opened: when the folder read is then no longer there as it was, it is chosen again, rather than called corrupt."""
    for attempt in range(SWAP_TRIES):
        folder = _weights_dir(run_dir, checkpoint)
        identity = _identity(folder)
        try:
            return _read(folder / file_name)
        except CheckpointError:
            if attempt == SWAP_TRIES - 1 or _identity(folder) == identity:
                raise   # the folder stood still: the file itself is missing or broken
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def load_config(run_dir: Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist; pass the folder `vaekit train --run-dir` wrote")
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"{run_dir} has no config.json; is it a vaekit run directory?")
    try:
        config = RunConfig.load(run_dir / "config.json")
    except VaekitError as e:
        where = str(run_dir / "config.json")
        raise CheckpointError(str(e) if where in str(e) else f"{where}: {e}") from None
    check_loaded(config.plugins, run_dir)
    return config


def load_model(run_dir: Path, device: str | torch.device = "cpu", checkpoint: str = "last"):
    """(model in eval mode, RunConfig, epoch) from a run directory; device may be 'auto'; checkpoint
    'last' (the last finished epoch) or 'best' (the lowest validation loss). Weights whose model's work after
    training (a VQ-VAE's code prior) was never saved are refused."""
    config = load_config(run_dir)
    model = build_model(config.model)
    epoch = load_weights(run_dir, model, checkpoint, finished_only=True)
    check_finite(model, f"{run_dir} ({checkpoint})")
    return model.to(resolve_device(str(device))).eval(), config, epoch


def _weights_dir(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={checkpoint!r} (--checkpoint) is unknown; choose one of {', '.join(CHECKPOINTS)}")
    if checkpoint == "last":
        return _checkpoint_dir(run_dir)
    for name in (BEST, f".{BEST}.old"):
        if (Path(run_dir) / name).is_dir():
            return Path(run_dir) / name
    raise CheckpointError(f"{run_dir} has no best/ weights (it was trained without validation, --val-size 0); "
                          "use --checkpoint last")


def load_weights(run_dir: Path, model: torch.nn.Module, checkpoint: str = "last", finished_only: bool = False) -> int:
    """Load the checkpoint's weights into `model` in place; return the epoch they are from. finished_only: refuse
    weights whose model's work after training is pending (a run stopped before it was saved, or still training)."""
    tensors, meta = _read_newest(run_dir, checkpoint, "model.safetensors")
    if finished_only and meta.get("after_training") == "pending":
        raise CheckpointError(f"{run_dir} has no finished model yet: its work after training (a VQ-VAE's code prior) "
                              f"was not saved; finish it with `vaekit train --resume {run_dir}` (or wait for it to end)")
    load_state(model, tensors, run_dir, "config.json")
    return _epoch(meta, run_dir)


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where, config_name: str) -> None:
    """Load `tensors` into `model` in place, or refuse in one line: names or shapes that do not fit its config, and
    tensors of another dtype (load_state_dict would cast bool or int weights silently)."""
    own = model.state_dict()
    cast = next((k for k, t in tensors.items() if k in own and t.dtype != own[k].dtype), None)
    if cast is not None:
        raise CheckpointError(f"the weights in {where} are not the model's: {cast} is {tensors[cast].dtype}, the model "
                              f"holds {own[cast].dtype}; was the file altered? Export it again from its run")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"the weights in {where} do not fit its {config_name} ({first}); was the config edited?") from None


def _epoch(meta: dict, run_dir: Path) -> int:
    try:
        epoch = int(meta["epoch"])
    except (KeyError, ValueError):
        epoch = -1
    if epoch < 0:
        raise CheckpointError(f"the checkpoint in {run_dir} has no valid epoch in its metadata; it was not written by "
                              "vaekit or was altered: train a new run")
    return epoch


def check_finite(model: torch.nn.Module, where) -> None:
    """Refuse weights holding NaN or Inf: a model that has diverged must not be evaluated, sampled or drawn."""
    bad = non_finite(model)
    if bad:
        raise CheckpointError(f"the weights in {where} hold NaN or Inf ({bad[0]}{' ...' if len(bad) > 1 else ''}); "
                              "the run diverged: resume it from a finite checkpoint with a lower --lr, or retrain")


def load_trainer_state(run_dir: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimiser in place and return the trainer state saved beside it."""
    tensors, meta = _read_newest(run_dir, "last", "trainer.safetensors")
    try:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, parse_json(meta["optimizer"])))
        state = parse_json(meta["state"])
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
            raise ValueError("no epoch in the trainer state")
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"the trainer state in {run_dir} does not fit this run ({e}); start a new run") from None
    state["tensors"] = {k.removeprefix("state/"): v for k, v in tensors.items() if k.startswith("state/")}
    return state


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, slots in sd["state"].items():
        for name, v in slots.items():
            if torch.is_tensor(v):
                tensors[f"optim/{pid}/{name}"] = v.contiguous()
            else:
                scalars[f"{pid}/{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}
