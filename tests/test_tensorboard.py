"""TensorBoard: the event files, read back with tensorboard's own reader, hold every metrics.jsonl number, the
sample and reconstruction grids and the posterior means' histogram; a resumed run has no duplicate steps."""

import pytest

from vaekit.cli.main import main
from vaekit.store.metrics import read_metrics

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard extra is not installed: pip install 'vaekit[tensorboard]'")

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--data", "digits", "--latent-dim", "2", "--hidden", "8", "--val-size", "100", "--no-report", "--no-progress"]


def _read(run):
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0,
                                                                                       "histograms": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_the_event_files_hold_the_metrics_and_a_resume_adds_no_duplicate_steps(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "2", "--tensorboard", *TINY]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3", "--tensorboard"]) == 0
    acc = _read(run)
    metrics = read_metrics(run)
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    for name in ("train_loss", "train_kl", "val_loss", "images_per_s", "lr"):
        events = acc.Scalars(name)
        assert [e.step for e in events] == [1, 2, 3], name            # each epoch once, across the resume
        assert [e.value for e in events] == pytest.approx([r[name] for r in metrics], rel=1e-6), name
    tags = acc.Tags()
    assert "samples" in tags["images"] and any(t.startswith("reconstructions") for t in tags["images"])
    assert [e.step for e in acc.Images("samples")] == [1, 2, 3]
    assert [e.step for e in acc.Histograms("posterior means")] == [1, 2, 3]


@pytest.mark.slow
def test_an_epoch_logged_before_a_crash_is_shown_once(tmp_path):
    """Epoch 2 logged, then the process died before... the resume trains epoch 2 again: purge_step drops the old one."""
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "2", "--tensorboard", *TINY]) == 0
    from vaekit.integrations.tensorboard import TensorBoard

    extra = TensorBoard(run)                       # a stray epoch-3 event, as if written before a crash
    extra._open(3)
    extra.writer.add_scalar("train_loss", 123.0, 3)
    extra.close()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--tensorboard"]) == 0
    events = _read(run).Scalars("train_loss")
    assert [e.step for e in events] == [1, 2, 3] and events[-1].value != 123.0


def test_a_hook_can_stop_training_cleanly(tmp_path):
    from vaekit import DataConfig, ModelConfig, RunConfig, TrainConfig, fit

    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,)), DataConfig("digits", val_size=100), TrainConfig(epochs=5))
    seen = []

    def enough(record, model):
        seen.append(record["epoch"])
        return "the hook has seen enough" if record["epoch"] == 2 else None

    result = fit(config, tmp_path / "run", hooks=[enough], progress=False, log=lambda s: None)
    assert seen == [1, 2] and "the hook has seen enough" in result.stopped
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]
