"""The `vaekit` command end to end, and its one-line errors (no traceback, non-zero exit)."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from vaekit.cli.main import main

TINY = ["--data", "digits", "--val-size", "100", "--latent-dim", "2", "--hidden", "32", "--epochs", "2", "--no-progress"]


# Runs the command in a fresh interpreter whose network calls fail at once: tests never download.
OFFLINE = ("import urllib.request, sys; urllib.request.urlopen = lambda *a, **k: (_ for _ in ()).throw(OSError('offline')); "
           "from vaekit.cli.main import main; sys.exit(main(sys.argv[1:]))")


def vaekit(*args):
    return subprocess.run([sys.executable, "-c", OFFLINE, *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_train_eval_sample_smoke(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY]) == 0
    assert main(["eval", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.split("run saved in")[-1].split("\n", 1)[1])
    assert out["split"] == "test" and out["n"] == 297
    assert out["objective"] == pytest.approx(out["recon"] + out["kl"]) == pytest.approx(out["neg_elbo"])
    assert main(["sample", str(run), "-n", "12", "--nrow", "4", "--scale", "1", "--out", str(tmp_path / "s.png")]) == 0
    img = Image.open(tmp_path / "s.png")
    assert img.size == (4 * 10 + 2, 3 * 10 + 2)  # 8x8 tiles, 2-pixel padding


@pytest.mark.slow
def test_resume_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--run-dir", str(run), *TINY])
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert main(["train", "--resume", str(run), "--lr", "0.1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "only --epochs, --max-minutes, --early-stop, --checkpoint-every, --device, --threads, --report, --compile may change" in err
    assert "lr 0.001 -> 0.1" in err          # the message names what differs


@pytest.mark.slow
def test_zero_epochs_saves_the_untrained_model_as_a_baseline(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, "--epochs", "0"]) == 0
    out = capsys.readouterr().out
    assert f"--epochs 0: {run} keeps the untrained model as its epoch 0" in out and "report.html" in out
    assert main(["eval", str(run), "--json"]) == 0
    untrained = json.loads(capsys.readouterr().out)
    assert untrained["epoch"] == 0 and untrained["neg_elbo"] > 0
    assert (run / "metrics.jsonl").read_text() == ""
    assert main(["train", "--resume", str(run), "--epochs", "1", "--no-progress"]) == 0
    assert main(["eval", str(run), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out.split("run saved in")[-1].split("\n", 1)[1])
    assert trained["epoch"] == 1 and trained["neg_elbo"] < untrained["neg_elbo"]


@pytest.mark.slow
def test_autoencoder_trains_with_its_own_loss(tmp_path):
    run = tmp_path / "ae"
    assert main(["train", "--run-dir", str(run), "--model", "ae", *TINY]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["loss"] == "ae"


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["eval", "{tmp}/nowhere"], "does not exist"),
    (["sample", "{tmp}/nowhere"], "does not exist"),
    (["train", "--run-dir", "{tmp}/r", "--epochs", "-1", "--data", "digits"], "epochs=-1 is impossible"),
    (["train", "--run-dir", "{tmp}/r", "--latent-dim", "0", "--data", "digits"], "latent_dim=0 is impossible"),
    (["train", "--run-dir", "{tmp}/r", "--data", "digits", "--val-size", "5000"],
     "val_size=5000 (DataConfig.val_size, --val-size) leaves no training data"),
    (["train", "--run-dir", "{tmp}/r", "--data", "mnist", "--data-dir", "{tmp}/empty"], "mnist is not in"),
    (["train", "--run-dir", "{tmp}/r", "--model", "gan", "--data", "digits", "--val-size", "10"], "model 'gan' is unknown"),
])
@pytest.mark.subprocess
def test_bad_input_is_one_line_no_traceback(tmp_path, args, message):
    r = vaekit(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_corrupt_checkpoint_is_one_line_and_nothing_is_overwritten(tmp_path):
    run = tmp_path / "run"
    main(["train", "--run-dir", str(run), *TINY])
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    (tmp_path / "keep.png").write_bytes(b"precious")
    r = vaekit("sample", run, "--out", tmp_path / "keep.png")
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "keep.png").read_bytes() == b"precious"
    r = vaekit("train", "--run-dir", run, *TINY)
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert weights.read_bytes() == b"\x00" * 64


@pytest.mark.slow
@pytest.mark.subprocess
def test_demo_falls_back_to_the_bundled_digits_offline(tmp_path):
    r = vaekit("demo", "--run-dir", tmp_path / "demo", "--epochs", "2", "--data-dir", tmp_path / "empty", "--no-progress")
    assert r.returncode == 0, r.stderr
    notice = next(line for line in r.stdout.splitlines() if "bundled 8x8 digits" in line)
    assert len(notice.replace(str(tmp_path / "empty" / "mnist"), "")) < 200 and not (tmp_path / "empty").exists()
    for name in ("samples.png", "reconstructions.png", "test_metrics.json", "metrics.jsonl", "config.json"):
        assert (tmp_path / "demo" / name).is_file()
    assert json.loads((tmp_path / "demo" / "test_metrics.json").read_text())["data"] == "digits"


@pytest.mark.slow
@pytest.mark.subprocess
def test_eval_reports_the_importance_sampled_likelihood(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--run-dir", str(run), *TINY, "--loss", "iwae", "--k", "3", "--pixels", "dynamic"])
    capsys.readouterr()
    assert main(["eval", str(run), "--nll-k", "50", "--json"]) == 0
    ll = json.loads(capsys.readouterr().out)["likelihood"]
    assert ll["k"] == 50 and ll["n"] == 297 and ll["nll"] <= ll["neg_elbo"] + 0.5
    assert ll["bits_per_dim"] == pytest.approx(ll["nll"] / (64 * 0.6931471805599453))
    assert 0 <= ll["active_units"] <= 2
    r = vaekit("eval", run, "--nll-k", "0")
    assert r.returncode == 2 and "k=0 is impossible" in r.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_presets_fill_the_config_and_flags_override_them():
    from vaekit.cli.main import build_parser, config_from_args
    from vaekit.config.presets import get_preset

    args = build_parser().parse_args(["train", "--preset", "iwae-paper", "--loss", "iwae", "--k", "5", "--epochs", "7"])
    config = config_from_args(args, base=get_preset(args.preset))
    assert config.model.hidden_dims == (200, 200) and config.model.latent_dim == 50 and config.model.activation == "tanh"
    assert config.data.pixels == "dynamic" and config.train.batch_size == 20 and config.train.lr_schedule == "iwae"
    assert config.train.loss == "iwae" and config.train.mc_samples == 5 and config.train.epochs == 7
    r = vaekit("train", "--preset", "nope")
    assert r.returncode == 2 and "preset 'nope' is unknown" in r.stderr
