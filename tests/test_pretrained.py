"""Hugging Face-style folders: save_pretrained -> from_pretrained gives bit-identical weights and the same eval numbers;
loading never runs code or unpickles anything a folder holds; hub repo ids go through huggingface_hub (offline
here: its download is replaced by a local folder)."""

import pickle

import pytest
import torch

from vaekit import DataConfig, ModelConfig, RunConfig, TrainConfig, evaluate, fit, from_pretrained, load_data, save_pretrained
from vaekit.cli.main import main
from vaekit.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,), prior="mog", prior_components=3),
                       DataConfig("digits", val_size=100), TrainConfig(epochs=2, precision="fp32"))
    return fit(config, tmp_path_factory.mktemp("r") / "run", progress=False, log=lambda s: None)


def test_a_saved_folder_loads_bit_identical_weights_and_evaluates_the_same(tmp_path, run):
    folder = save_pretrained(run.run_dir, tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md", "samples.png"}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vaekit") and "vaekit train --config config.json" in card
    assert card.count("\n- vae\n") == 1 and "\n- digits\n" in card   # the model is a vae: its tag once
    model = from_pretrained(folder)
    for (name, a), b in zip(run.model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    test = load_data(model.run_config.data).test
    torch.manual_seed(0)
    expected = evaluate(run.model, test, run.config.train)
    torch.manual_seed(0)
    assert evaluate(model, test, model.run_config.train) == expected
    assert model.run_config == run.config


def test_a_run_directory_loads_as_its_last_checkpoint(run):
    model = from_pretrained(run.run_dir)
    assert not model.training and model.run_config == run.config
    for (name, a), b in zip(run.model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_loading_runs_no_code_and_unpickles_nothing_in_the_folder(tmp_path, run):
    folder = save_pretrained(run.run_dir, tmp_path / "model")
    marker = tmp_path / "executed"

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Bomb()))
    (folder / "evil.pkl").write_bytes(pickle.dumps(Bomb()))
    (folder / "modeling.py").write_text(f"open({str(marker)!r}, 'w')\n")
    from_pretrained(folder)
    assert not marker.exists()


def test_a_repo_id_is_downloaded_with_huggingface_hub(tmp_path, run, monkeypatch):
    hub = pytest.importorskip("huggingface_hub", reason="the hub extra is not installed: pip install 'vaekit[hub]'")
    folder = save_pretrained(run.run_dir, tmp_path / "model")
    asked = {}

    def offline_download(repo_id, revision=None, allow_patterns=None, **kw):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(folder)
    monkeypatch.setattr(hub, "snapshot_download", offline_download)
    model = from_pretrained("someone/mnist-vae")
    assert asked["repo_id"] == "someone/mnist-vae" and "model.safetensors" in asked["allow_patterns"]
    assert not any(p.endswith((".py", ".bin", ".pkl")) for p in asked["allow_patterns"])
    assert torch.equal(next(iter(model.state_dict().values())), next(iter(run.model.state_dict().values())))


def test_a_repo_that_cannot_be_downloaded_is_one_vaekit_error(monkeypatch):
    """Offline, huggingface_hub raises its own LocalEntryNotFoundError (an OSError with a 3-line message): it used to
    reach a Python caller as such."""
    hub = pytest.importorskip("huggingface_hub", reason="the hub extra is not installed: pip install 'vaekit[hub]'")

    def offline(*a, **k):
        raise hub.errors.LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub.\n"
                                                 "Please check your internet connection and try again.")
    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="cannot download someone/mnist-vae from the Hugging Face hub") as e:
        from_pretrained("someone/mnist-vae")
    assert "\n" not in str(e.value)


def test_bad_folders_and_the_command_line(tmp_path, run, capsys):
    with pytest.raises(CheckpointError, match="neither a folder nor a hub repo id"):
        from_pretrained(tmp_path / "missing" / "deep")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path / "empty")
    with pytest.raises(ConfigError, match="not empty"):
        save_pretrained(run.run_dir, run.run_dir)
    assert main(["export", str(run.run_dir), "--format", "hf", "--out", str(tmp_path / "cli")]) == 0
    assert "from_pretrained" in capsys.readouterr().out and (tmp_path / "cli" / "model.safetensors").exists()
    assert main(["export", str(run.run_dir), "--push-to", "a/b", "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "--format hf" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_shared_folders_hold_no_path_of_this_machine(tmp_path):
    """What save_pretrained writes (and push_to_hub uploads) and export's side file name no folder of the machine the
    run was trained on: before, config.json held the data file's absolute path and the dataset cache, and
    vaekit-onnx.json the run's absolute path."""
    import numpy as np

    from vaekit import export_onnx
    secret = tmp_path / "home" / "someone" / "private"
    secret.mkdir(parents=True)
    np.save(secret / "faces.npy", (np.random.default_rng(0).random((60, 1, 4, 4)) * 255).astype(np.uint8))
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,)),
                       DataConfig("npy", path=str(secret / "faces.npy"), data_dir=str(secret), val_size=0),
                       TrainConfig(epochs=1, precision="fp32", compile="off"))
    fit(config, secret / "run", progress=False, log=lambda line: None)
    save_pretrained(secret / "run", tmp_path / "shared")
    export_onnx(secret / "run", tmp_path / "onnx")
    for path in [*(tmp_path / "shared").iterdir(), tmp_path / "onnx" / "vaekit-onnx.json"]:
        if path.suffix in (".json", ".md"):
            assert "someone" not in path.read_text(), path.name
    import json
    assert json.loads((tmp_path / "shared" / "config.json").read_text())["data"]["path"] == "faces.npy"   # its name
    assert from_pretrained(tmp_path / "shared").config.latent_dim == 2
