"""What a new user tripped over, each fixed and kept fixed: output without a terminal, the validation split of
small data, time budgets on resume, a stable precision, honest curves under a KL schedule, early stopping
and best weights, table samples with noise, class names in legends, the VQ-VAE's names."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import needs_mnist, synthetic_splits
from vaekit import CheckpointError, DataConfig, ModelConfig, RunConfig, TrainConfig, fit, load_data, load_model, plots, runtime
from vaekit.cli.main import main
from vaekit.evaluation.evaluate import evaluate_run
from vaekit.outputs.report import write_report

TINY = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(16,)), DataConfig("digits"), TrainConfig(epochs=2, batch_size=32))
pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(config, run_dir, **kw):
    return fit(config, run_dir, progress=kw.pop("progress", False), log=kw.pop("log", lambda s: None), **kw)


def with_train(config, **kw):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **kw))


@pytest.mark.slow
@pytest.mark.subprocess
def test_without_a_terminal_there_is_no_progress_bar_flood(tmp_path):
    # stderr redirected to a file, as in CI or a notebook: one line per epoch on stdout and nothing on stderr
    r = subprocess.run([sys.executable, "-m", "vaekit", "train", "--data", "digits", "--epochs", "3", "--hidden", "16",
                        "--latent-dim", "2", "--run-dir", str(tmp_path / "run"), "--no-report"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""                                   # before: ~1.4 KB of \r bar updates for 3 small epochs
    assert sum(line.startswith("epoch ") for line in r.stdout.splitlines()) == 3


def test_small_data_gets_a_validation_share_by_default(tmp_path):
    data = load_data(DataConfig("digits"))                  # 1,500 training images: before, val_size 5000 failed
    assert len(data.val) == 150 and len(data.train) == 1350
    result = quiet(TINY, tmp_path / "run")
    assert result.config.data.val_size == 150 and "val_loss" in result.history[-1]


@needs_mnist
def test_mnist_keeps_its_5000_validation_images():
    assert len(load_data(DataConfig("mnist")).val) == 5000


def test_a_time_budget_is_per_invocation_and_says_why_it_stopped(tmp_path):
    lines = []
    data = synthetic_splits()
    config = with_train(TINY, epochs=50, max_minutes=1e-9)
    result = quiet(config, tmp_path / "run", data=data, log=lines.append)
    assert len(result.history) == 1 and "budget" in result.stopped and any("budget" in line for line in lines)
    # resumed with the same tiny budget: before, the past time counted against it and nothing was trained
    again = quiet(config, tmp_path / "run", data=data, resume=True)
    assert len(again.history) == 2
    longer = quiet(with_train(config, epochs=4, max_minutes=10.0), tmp_path / "run", data=data, resume=True)
    assert len(longer.history) == 4 and longer.stopped is None


def test_auto_precision_is_decided_once_per_machine_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "_cpu_has_bf16", runtime._cpu_has_bf16.__wrapped__)   # no in-process memo
    cpuinfo = runtime.Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or "avx512_bf16" not in cpuinfo.read_text():
        info = tmp_path / "cpuinfo"
        info.write_text("model name : test\nflags : avx512f avx512_bf16\n")
        real = runtime.Path
        monkeypatch.setattr(runtime, "Path", lambda p: info if p == "/proc/cpuinfo" else real(p))
    timings = iter([0.1, 1.0] * 5 + [1.0, 0.1] * 5)      # a busy machine: the second measurement would say otherwise
    monkeypatch.setattr(runtime, "_seconds_per_matmul", lambda dtype, **kw: next(timings))
    first = runtime.resolve_precision("auto", torch.device("cpu"))
    assert [runtime.resolve_precision("auto", torch.device("cpu")) for _ in range(3)] == [first] * 3
    assert (tmp_path / "cache" / "precision.json").is_file()
    result = quiet(TINY, tmp_path / "run", data=synthetic_splits())
    assert {r["precision"] for r in result.history} == {runtime.resolve_precision("auto", torch.device("cpu"))}


def test_the_real_timing_does_not_draw_from_the_global_rng():
    state = torch.get_rng_state()
    runtime._seconds_per_matmul(torch.float32, n=32, repeats=1)
    assert torch.equal(state, torch.get_rng_state())       # before: two randn calls moved a resumed run's RNG stream


def test_validation_under_a_kl_warm_up_uses_the_current_weight_and_reports_the_plain_elbo(tmp_path):
    config = with_train(TINY, epochs=2, kl_warmup_epochs=10.0)
    rows = quiet(config, tmp_path / "run", data=synthetic_splits()).history
    for r in rows:
        weight = r["epoch"] / 10.0                           # the weight at the end of that epoch
        assert r["val_loss"] == pytest.approx(r["val_recon"] + weight * r["val_kl"], rel=1e-5)
        assert r["val_neg_elbo"] == pytest.approx(r["val_recon"] + r["val_kl"], rel=1e-6)
        assert r["train_neg_elbo"] == pytest.approx(r["train_recon"] + r["train_kl"], rel=1e-6)


def test_a_beta_vae_eval_prints_its_objective_and_the_true_elbo(tmp_path, capsys):
    run = tmp_path / "beta"
    assert main(["train", "--data", "digits", "--beta", "4", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                 "--run-dir", str(run), "--no-report", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["objective"] == pytest.approx(r["recon"] + 4 * r["kl"]) and r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"])
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"objective (elbo) {r['objective']:.2f}" in out and f"-ELBO {r['neg_elbo']:.2f}" in out


def test_early_stopping_keeps_the_best_weights_and_every_command_can_use_them(tmp_path, capsys):
    data = synthetic_splits()
    lines = []
    # a learning rate this large makes the validation loss stop improving at once
    result = quiet(with_train(TINY, epochs=30, lr=0.5, early_stop=2), tmp_path / "run", data=data, log=lines.append)
    best = min(r["val_loss"] for r in result.history)
    best_epoch = next(r["epoch"] for r in result.history if r["val_loss"] == best)
    assert len(result.history) == best_epoch + 2 < 30 and "stopping early" in result.stopped
    model, _, epoch = load_model(tmp_path / "run", checkpoint="best")
    assert epoch == best_epoch and load_model(tmp_path / "run")[2] == len(result.history)
    run = plots.Run(tmp_path / "run", checkpoint="best")
    run.__dict__["test"] = data.test
    assert "best weights (epoch" in run.describe()
    quiet(dataclasses.replace(TINY, data=DataConfig("digits", val_size=0)), tmp_path / "noval")
    with pytest.raises(CheckpointError, match="no best/ weights"):
        load_model(tmp_path / "noval", checkpoint="best")
    assert main(["sample", str(tmp_path / "run"), "--checkpoint", "best", "-n", "4", "--out", str(tmp_path / "s.png")]) == 0


def test_table_samples_draw_from_p_x_given_z_and_say_so(tmp_path, capsys):
    rng = np.random.default_rng(0)
    table = tmp_path / "t.csv"
    rows = rng.normal(size=(400, 3)) * [1.0, 5.0, 0.2] + [0, 10, -3]
    table.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.5f}" for v in row) for row in rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--data", "csv", "--path", str(table), "--latent-dim", "1", "--hidden", "16", "--epochs", "30", "--lr", "0.01",
                 "--run-dir", str(run), "--no-report", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "2000", "--out", str(tmp_path / "s.csv")]) == 0
    assert "x ~ p(x|z)" in capsys.readouterr().out
    drawn = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert main(["sample", str(run), "-n", "2000", "--no-noise", "--out", str(tmp_path / "m.csv")]) == 0
    assert "the mean of p(x|z)" in capsys.readouterr().out
    means = np.loadtxt(tmp_path / "m.csv", delimiter=",", skiprows=1)
    data_std = rows.std(0)
    # before: decoder means only, under-dispersed; the draws come closer to the data's spread in every column
    assert (np.abs(drawn.std(0) - data_std) < np.abs(means.std(0) - data_std)).all()
    assert (means.std(0) < drawn.std(0)).all()


def test_scatter_legends_use_the_class_names(tmp_path):
    from PIL import Image

    folder = tmp_path / "pets"
    for k, name in enumerate(["cat", "dog", "emu"]):
        (folder / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((6, 6), 40 + 80 * k + i, np.uint8)).save(folder / name / f"{i}.png")
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,)), DataConfig("folder", path=str(folder), test_fraction=0.5),
                       TrainConfig(epochs=1))
    quiet(config, tmp_path / "run")
    fig, _ = plots.figure("scatter", [plots.Run(tmp_path / "run")], plots.PlotOptions(max_points=10))
    legend = fig.axes[0].get_legend()
    assert legend.get_title().get_text() == "class" and {t.get_text() for t in legend.get_texts()} <= {"cat", "dog", "emu"}
    digits = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,)), DataConfig("digits"), TrainConfig(epochs=1))
    quiet(digits, tmp_path / "digits")
    fig, _ = plots.figure("scatter", [plots.Run(tmp_path / "digits")], plots.PlotOptions())
    assert fig.axes[0].get_legend().get_title().get_text() == "digit"


def test_vq_vae_curves_report_and_samples_use_the_right_names(tmp_path):
    config = RunConfig(ModelConfig(model="vqvae", latent_dim=4, code_dim=3, codebook_size=16, hidden_dims=(16,)),
                       DataConfig("digits"), TrainConfig(epochs=2, prior_epochs=1))
    quiet(config, tmp_path / "vq")
    run = plots.Run(tmp_path / "vq")
    fig, _ = plots.figure("curves", [run], plots.PlotOptions())
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert "train objective (vq)" in labels and "train reconstruction -log p(x|z)" in labels
    assert not any(label.endswith("KL") for label in labels)          # a constant, not a curve
    fig, _ = plots.figure("samples", [run], plots.PlotOptions(n_samples=4))
    assert "N(0, I)" not in fig.get_suptitle() and "fitted autoregressive prior" in fig.get_suptitle()
    page = write_report(tmp_path / "vq", log=None).read_text()
    table = page.split('<table id="metrics">')[1].split("</table>")[0]
    assert "Negative ELBO" not in page and "<th>KL</th>" not in table and "objective (vq)" in table
    assert f", precision {run.metrics[-1]['precision']}" in page            # the precision used, as in metrics.jsonl
    extras = page.split('<table id="extras">')[1].split("</table>")[0]
    assert "codes: perplexity" in extras and "codes: nll bound" in extras
    assert "codes" in evaluate_run(tmp_path / "vq")


def test_the_banner_names_the_loss_its_samples_the_kl_estimator_and_the_schedule(tmp_path):
    lines = []
    quiet(with_train(TINY, epochs=1, mc_samples=3, kl="mc", beta=2.0), tmp_path / "run", data=synthetic_splits(),
          log=lines.append)
    assert lines[0].startswith("training vae (elbo loss, beta 2, 3 samples of z per example, Monte Carlo KL, "
                               "joint schedule; latent_dim=2) on synthetic")
    lines.clear()
    quiet(with_train(TINY, epochs=1), tmp_path / "run2", data=synthetic_splits(), log=lines.append)
    assert "1 sample of z per example, closed-form KL, joint schedule" in lines[0]


def test_the_banner_of_a_flow_posterior_says_monte_carlo(tmp_path):
    """q(z|x) with IAF steps has no closed-form KL against N(0, I): the losses estimate it by Monte Carlo, and the
    banner says so (it said closed-form)."""
    lines = []
    iaf = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, posterior="iaf", flow_steps=1, flow_hidden=8))
    quiet(with_train(iaf, epochs=1), tmp_path / "run", data=synthetic_splits(), log=lines.append)
    assert "Monte Carlo KL" in lines[0] and "closed-form" not in lines[0]


def test_an_autoencoder_reports_no_elbo_and_the_nll_refusal_names_every_model_that_has_one(tmp_path, capsys):
    from vaekit import MODELS, ConfigError, evaluate_run
    quiet(dataclasses.replace(with_train(TINY, epochs=1), model=dataclasses.replace(TINY.model, model="ae")),
          tmp_path / "ae")
    report = evaluate_run(tmp_path / "ae")
    assert "neg_elbo" not in report and report["objective"] == pytest.approx(report["recon"])
    assert main(["eval", str(tmp_path / "ae")]) == 0
    assert "ELBO" not in capsys.readouterr().out
    with pytest.raises(ConfigError) as refused:
        evaluate_run(tmp_path / "ae", nll_k=5)
    assert all(name in str(refused.value) for name, cls in MODELS.items() if cls.stochastic)
