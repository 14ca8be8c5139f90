import dataclasses
import json

import pytest
import torch

from conftest import needs_mnist, synthetic_splits
from vaekit import CheckpointError, DataConfig, ModelConfig, RunConfig, TrainConfig, fit, load_data, load_model
from vaekit.models.objectives import LossContext
from vaekit.store.checkpoint import save_checkpoint
from vaekit.store.metrics import run_numbers

TINY = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(16,)), DataConfig("digits"), TrainConfig(epochs=2, batch_size=16))


def quiet(config, run_dir, **kw):
    return fit(config, run_dir, progress=False, log=lambda s: None, **kw)


@needs_mnist
def test_loss_decreases_on_a_small_real_mnist_subset(tmp_path):
    config = RunConfig(ModelConfig(latent_dim=8, hidden_dims=(128,)), DataConfig("mnist", val_size=500, limit=2000),
                       TrainConfig(epochs=4, batch_size=64))
    history = quiet(config, tmp_path / "run").history
    train, val = [r["train_loss"] for r in history], [r["val_loss"] for r in history]
    assert train[-1] < train[0] - 30 and val[-1] < val[0]
    assert all(b < a for a, b in zip(train, train[1:]))


def test_run_directory_and_metrics(tmp_path):
    data = synthetic_splits()
    result = quiet(TINY, tmp_path / "run", data=data)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_recon", "train_kl", "val_loss", "val_recon", "val_kl", "seconds", "images_per_s"} <= set(rows[0])
    model, config, epoch = load_model(tmp_path / "run")
    assert epoch == 2 and config.model.input_shape == (1, 6, 6) == result.config.model.input_shape
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)


@pytest.mark.slow
@pytest.mark.parametrize("pixels,first", [("grey", 2), ("dynamic", 2), ("dynamic", 0)])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, pixels, first):
    """first: the epochs of the first call; 0 saves the untrained model as epoch 0 (`vaekit train --epochs 0`)."""
    config = dataclasses.replace(TINY, data=DataConfig("digits", pixels=pixels, val_size=100),
                                 train=dataclasses.replace(TINY.train, epochs=4))
    data = load_data(config.data)
    straight = quiet(config, tmp_path / "a", data=data)
    half = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=first))
    quiet(half, tmp_path / "b", data=data)
    torch.manual_seed(123)  # whatever happens in between must not matter
    resumed = quiet(config, tmp_path / "b", data=data, resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert run_numbers(resumed.history) == run_numbers(straight.history)   # the thread count may differ: not a number of the run


def test_a_run_is_never_overwritten_and_resume_refuses_changed_options(tmp_path):
    data = synthetic_splits()
    quiet(TINY, tmp_path / "run", data=data)
    before = (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        quiet(TINY, tmp_path / "run", data=data)
    changed = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, lr=0.5))
    with pytest.raises(CheckpointError, match="options differ"):
        quiet(changed, tmp_path / "run", data=data, resume=True)
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == before


def test_broken_and_foreign_checkpoints_are_refused(tmp_path):
    quiet(TINY, tmp_path / "run", data=synthetic_splits())
    weights = tmp_path / "run" / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "run")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(weights))
    with pytest.raises(CheckpointError, match="not a vaekit checkpoint"):
        load_model(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_a_crash_mid_save_keeps_the_previous_checkpoint(tmp_path):
    result = quiet(TINY, tmp_path / "run", data=synthetic_splits())
    opt = torch.optim.Adam(result.model.parameters())
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.rename(tmp_path / "run" / ".checkpoint.old")  # the moment between the two renames
    assert load_model(tmp_path / "run")[2] == 2
    save_checkpoint(tmp_path / "run", result.model, opt, {"epoch": 3, "tensors": {}})
    assert load_model(tmp_path / "run")[2] == 3 and not (tmp_path / "run" / ".checkpoint.old").exists()


def test_same_seed_same_numbers(tmp_path):
    data = synthetic_splits()
    a = quiet(TINY, tmp_path / "a", data=data).history
    b = quiet(TINY, tmp_path / "b", data=data).history
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


@pytest.mark.slow
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_low_dimensional_latents_train_and_sample(tmp_path, latent_dim):
    config = dataclasses.replace(TINY, model=ModelConfig(latent_dim=latent_dim, hidden_dims=(32,)),
                                 data=DataConfig("digits", val_size=100))
    result = quiet(config, tmp_path / "run")
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.model.generate(4).shape == (4, 1, 8, 8)


def test_the_iwae_learning_rate_schedule():
    from vaekit.training.schedules import learning_rate

    cfg = TrainConfig(lr=1e-3, lr_schedule="iwae")
    # stage i lasts 3^i epochs: epoch 0 | 1-3 | 4-12 | 13-39 | ... ; 3,280 epochs in all
    expected = {0: 0, 1: 1, 3: 1, 4: 2, 12: 2, 13: 3, 39: 3, 40: 4, 3279: 7, 5000: 7}
    for epoch, stage in expected.items():
        assert learning_rate(cfg, epoch) == pytest.approx(1e-3 * 10 ** (-stage / 7))
    assert learning_rate(TrainConfig(lr=0.01), 500) == 0.01


def test_a_time_budget_stops_training_and_resume_continues_it(tmp_path):
    config = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=50, max_minutes=1e-9))
    result = quiet(config, tmp_path / "run", data=synthetic_splits())
    assert len(result.history) == 1                      # the budget is checked after each epoch
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, max_minutes=10.0, epochs=3))
    assert len(quiet(longer, tmp_path / "run", data=synthetic_splits(), resume=True).history) == 3


def test_iwae_trains(tmp_path):
    config = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, loss="iwae", mc_samples=5))
    history = quiet(config, tmp_path / "run", data=synthetic_splits()).history
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_alternating_schedule_updates_encoder_and_decoder_in_turns(tmp_path):
    from vaekit import build_model
    from vaekit.models.objectives import LOSSES
    from vaekit.training.schedules import hold_fixed

    cfg = TrainConfig(schedule="alternating", e_steps=2, m_steps=1)
    model = build_model(ModelConfig(input_shape=(1, 6, 6), latent_dim=2, hidden_dims=(8,)))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x = synthetic_splits().train.x[:16]
    snapshot = lambda part: [p.detach().clone() for p in part.parameters()]  # noqa: E731
    moved = lambda before, part: any(not torch.equal(a, b) for a, b in zip(before, part.parameters()))  # noqa: E731
    for step, phase in enumerate(["E", "E", "M", "E"]):
        enc, dec = snapshot(model.encoder), snapshot(model.decoder)
        opt.zero_grad()
        LOSSES["elbo"](model, x, LossContext(cfg))["loss"].mean().backward()
        hold_fixed(model, cfg, step)
        opt.step()
        assert (moved(enc, model.encoder), moved(dec, model.decoder)) == ((True, False) if phase == "E" else (False, True))


@pytest.mark.slow
def test_alternating_training_learns_and_resumes_exactly(tmp_path):
    config = dataclasses.replace(TINY, data=DataConfig("digits", val_size=100),
                                 train=dataclasses.replace(TINY.train, epochs=4, schedule="alternating", e_steps=3, m_steps=2))
    data = load_data(config.data)
    straight = quiet(config, tmp_path / "a", data=data)
    assert straight.history[-1]["train_loss"] < straight.history[0]["train_loss"]
    quiet(dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2)), tmp_path / "b", data=data)
    resumed = quiet(config, tmp_path / "b", data=data, resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_learning_rate_schedules_and_warm_up():
    import math

    from vaekit import ConfigError, RunConfig
    from vaekit.training.resolve import check_names
    from vaekit.training.schedules import learning_rate

    with pytest.raises(ConfigError, match="lr_schedule 'steps' is unknown .* choose one of constant, iwae, cosine"):
        check_names(RunConfig(train=TrainConfig(lr_schedule="steps")))   # the choices are the registry's keys
    cfg = TrainConfig(lr=0.01, lr_schedule="cosine", epochs=4)
    for progress, factor in [(0, 1.0), (2, 0.5), (4, 0.0), (1, 0.5 * (1 + math.cos(math.pi / 4)))]:
        assert learning_rate(cfg, progress) == pytest.approx(0.01 * factor, abs=1e-12)
    warm = TrainConfig(lr=0.01, lr_warmup_epochs=2.0)
    assert [learning_rate(warm, p) for p in (0.5, 1.0, 2.0, 3.0)] == pytest.approx([0.0025, 0.005, 0.01, 0.01])
    assert learning_rate(TrainConfig(lr=0.01), 2.7) == 0.01      # constant: the same at every step


@pytest.mark.slow
def test_batch_growth_by_epoch_trains_resumes_exactly_and_refuses_impossible_schedules(tmp_path):
    from vaekit.config.schema import ConfigError
    from vaekit.training.schedules import batch_size_at, steps_in

    grown = TrainConfig(batch_size=16, batch_growth=[[2, 64], [3, 128]])   # lists, as JSON and argparse give them
    assert grown.batch_growth == ((2, 64), (3, 128))
    assert [batch_size_at(grown, e) for e in range(5)] == [16, 16, 64, 128, 128]
    assert steps_in(grown, 1000, 0, 4) == 63 + 63 + 16 + 8
    for bad in [((0, 64),), ((2, 64), (2, 128)), ((3, 64), (2, 128)), ((2, 0),)]:
        with pytest.raises(ConfigError, match="batch_growth"):
            TrainConfig(batch_growth=bad)
    config = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=4, batch_growth=((2, 64),)))
    data = load_data(config.data)
    straight = quiet(config, tmp_path / "a", data=data)
    assert [r["batch_size"] for r in straight.history] == [16, 16, 64, 64]
    quiet(dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=3)), tmp_path / "b", data=data)
    resumed = quiet(config, tmp_path / "b", data=data, resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert RunConfig.load(tmp_path / "b" / "config.json").train.batch_growth == ((2, 64),)   # saved and read back
