"""ONNX export: every model x architecture exports its encoder and decoder, and onnxruntime reproduces PyTorch on a
batch of another size; the JSON beside them describes each input and output and the prior."""

import json

import numpy as np
import pytest
import torch

from vaekit import MODELS, DataConfig, ModelConfig, RunConfig, TrainConfig, export_onnx, fit
from vaekit.cli.main import main
from vaekit.errors import ConfigError
from vaekit.models.nets import ARCHITECTURES

ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install 'vaekit[export]'")
pytest.importorskip("onnxscript", reason="the export extra is not installed: pip install 'vaekit[export]'")

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, digits, model: str, arch: str = "mlp", **model_kw):
    cls = MODELS[model]
    config = RunConfig(ModelConfig(model=model, latent_dim=2, hidden_dims=(4, 8) if arch == "conv" else (8,), arch=arch,
                                   **model_kw),
                       DataConfig("digits", val_size=0),
                       TrainConfig(epochs=1, batch_size=256, precision="fp32", **({"prior_epochs": 1} if cls.discrete else {})))
    return fit(config, tmp_path / f"{model}-{arch}", data=digits, progress=False, log=lambda s: None).run_dir


@pytest.fixture(scope="module")
def digits():
    from vaekit import load_data

    return load_data(DataConfig("digits", val_size=0))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_exports_and_onnxruntime_matches_pytorch(tmp_path, digits, model, arch):
    run = _run(tmp_path, digits, model, arch)
    out = export_onnx(run, tmp_path / "onnx", log=lambda s: None)
    about = json.loads((out / "vaekit-onnx.json").read_text())
    assert {p.name for p in out.iterdir()} == {"encoder.onnx", "decoder.onnx", "vaekit-onnx.json"}
    assert about["model"] == model and about["encoder"]["max_abs_difference"] <= 1e-4
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    x = digits.test.head(7)                                     # a batch size the export never saw
    y = digits.test.y[:7]
    feeds = {"x": x.numpy(), **({"y": y.numpy()} if MODELS[model].conditional else {})}
    outputs = dict(zip([o["name"] for o in about["encoder"]["outputs"]], enc.run(None, feeds), strict=True))
    from vaekit import load_model

    torch_model = load_model(run)[0].eval()
    with torch.no_grad():
        q = torch_model.given(y).encode(x)
        for name, value in outputs.items():
            np.testing.assert_allclose(value, getattr(q, name).float().numpy() if value.dtype != np.int64
                                       else getattr(q, name).numpy(), atol=1e-4)
        z = q.mode.float()
    image = dec.run(None, {"z": z.numpy(), **({"y": y.numpy()} if MODELS[model].conditional else {})})[-1]
    with torch.no_grad():
        expected = torch_model.given(y).decode(z).mean.clamp(0, 1)
    assert [o["name"] for o in about["decoder"]["outputs"]][-1] == "mean"
    np.testing.assert_allclose(image, expected.numpy(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("prior", "posterior", "model"), [("mog", "iaf", "vae"), ("vamp", "gaussian", "hvae")])
def test_priors_and_posteriors_export_and_the_json_lets_another_program_sample(tmp_path, digits, prior, posterior, model):
    run = _run(tmp_path, digits, model, prior=prior, prior_components=3,
               **({"posterior": posterior, "flow_hidden": 8} if posterior != "gaussian" else {}))
    out = export_onnx(run, tmp_path / "onnx", log=lambda s: None)
    about = json.loads((out / "vaekit-onnx.json").read_text())
    if prior == "mog":   # a mixture's numbers: sample it without vaekit, decode with onnxruntime
        p = about["prior"]
        assert p["kind"] == "gaussian_mixture" and len(p["weights"]) == 3 and abs(sum(p["weights"]) - 1) < 1e-5
        rng = np.random.default_rng(0)
        k = rng.choice(3, size=5, p=np.array(p["weights"]) / sum(p["weights"]))
        z = (np.array(p["mu"])[k] + np.exp(0.5 * np.array(p["logvar"])[k]) * rng.standard_normal((5, 2))).astype("float32")
        dec = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
        image = dec.run(None, {"z": z})[-1]
        assert image.shape == (5, 1, 8, 8) and 0 <= image.min() and image.max() <= 1
        assert [o["name"] for o in about["encoder"]["outputs"]] == ["mu", "logvar", "context", "mode"]
    else:
        assert about["prior"]["kind"] == "other" and about["decoder"]["inputs"][0]["shape"] == ["batch", 2 + 50]


@pytest.mark.slow
def test_export_errors_are_one_line_and_write_nothing(tmp_path, digits, capsys):
    run = _run(tmp_path, digits, "vae")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export_onnx(run, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not (tmp_path / "o").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "cli")]) == 0
    assert "exported" in capsys.readouterr().out and (tmp_path / "cli" / "decoder.onnx").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_export_command_prints_no_third_party_warnings(tmp_path, digits):
    """torch.onnx logged 8 lines about torchvision (which vaekit does not use) and 2 FutureWarnings about its own
    internals; a fresh interpreter, since Python shows each warning once per process."""
    import subprocess
    import sys
    run = _run(tmp_path, digits, "vae")
    r = subprocess.run([sys.executable, "-m", "vaekit", "export", str(run), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == ["encoder", "decoder", f"exported {run} to {tmp_path / 'o'}"]


def test_without_the_extra_the_error_says_what_to_install(tmp_path, digits, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.startswith("onnx"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ConfigError, match=r"pip install 'vaekit\[export\]'"):
        export_onnx(tmp_path / "any", tmp_path / "out")
