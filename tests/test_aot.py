"""The training step compiled ahead of time (vaekit.accel.aot): built once by a compiling run, loaded by later compiling
runs of the same model on the same machine, taking the steps the eager step takes. What the cache holds never changes
a run's numbers: a run that asks for the compiled step gets the same weights whether it builds the package or finds
it, a run that does not ask for it never takes it, and a package that does not load or does not match its model is
deleted and built again."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import synthetic_splits
from vaekit import ModelConfig, RunConfig, TrainConfig, fit
from vaekit.accel import aot as aot
from vaekit.runtime import cache_dir

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 6, 6)


def _config(epochs: int = 1, model: dict | None = None, **train) -> RunConfig:
    train = {"batch_size": 16, "precision": "fp32", "compile": "on", "seed": 3, **train}
    return RunConfig(ModelConfig(**{"latent_dim": 2, "hidden_dims": (8,), "input_shape": SHAPE, **(model or {})}),
                     train=TrainConfig(epochs=epochs, **train))


def _fit(config: RunConfig, run_dir, lines: list | None = None):
    return fit(config, run_dir, data=synthetic_splits(SHAPE, n=96), progress=False,
               log=(lines.append if lines is not None else lambda line: None))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The package a compiling run builds for _config() (into the test session's cache), that run's log and its
    weights."""
    before = set((cache_dir() / "steps").glob("*.pt2"))
    lines = []
    result = _fit(_config(), tmp_path_factory.mktemp("build") / "run", lines)
    made = set((cache_dir() / "steps").glob("*.pt2")) - before
    return (made.pop() if made else None), lines, result.model.state_dict()


def _same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.values(), b.values(), strict=True))


@pytest.mark.slow
@pytest.mark.compile
def test_a_later_compiling_run_loads_the_step_and_trains_the_same_weights(package, tmp_path):
    """The same config with and without the package in the cache (the fixture's run built it): the same weights, bit
    for bit. The cache only saved the build."""
    path, built, weights = package
    assert path is not None or any("compiled ahead of time" in line for line in built)   # (or an earlier test built it)
    assert not [line for line in built if line.startswith("note:")]
    lines = []
    result = _fit(_config(), tmp_path / "run", lines)
    assert not any(line.startswith("building") for line in lines)
    assert any(line.startswith("batches of 16: the training step compiled ahead of time") for line in lines)
    assert [(r["ahead_of_time"], r["compiled"]) for r in result.history] == [(True, True)]
    assert _same_weights(result.model.state_dict(), weights)


@pytest.mark.compile
def test_a_short_auto_run_is_eager_whatever_the_cache_holds(package, tmp_path):
    """auto: a run of fewer than 10,000 steps is eager, though a package for it is in the cache: bit for bit the run
    with --compile off (before, it took the package an earlier run had left)."""
    lines = []
    auto = _fit(_config(2, compile="auto"), tmp_path / "auto", lines)
    eager = _fit(_config(2, compile="off"), tmp_path / "eager")
    assert not any("compiled ahead of time" in line for line in lines)
    assert not any(r["ahead_of_time"] or r["compiled"] for r in auto.history)
    assert _same_weights(auto.model.state_dict(), eager.model.state_dict())


@pytest.mark.compile
def test_its_steps_are_the_eager_steps(package, tmp_path):
    """Against the eager step (autograd and torch's fused Adam kernel): the same loss terms and weights, up to the
    rounding of fused loops."""
    ahead = _fit(_config(3), tmp_path / "ahead")
    eager = _fit(_config(3, compile="off"), tmp_path / "eager")
    assert all(r["ahead_of_time"] for r in ahead.history) and not any(r["ahead_of_time"] for r in eager.history)
    for a, b in zip(ahead.history, eager.history, strict=True):
        for key in ("train_loss", "train_recon", "train_kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-4)
    for a, b in zip(ahead.model.parameters(), eager.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.compile
def test_a_run_with_it_resumes_bit_exactly(package, tmp_path):
    whole = _fit(_config(2), tmp_path / "whole")
    _fit(_config(1), tmp_path / "parts")
    resumed = fit(_config(2), tmp_path / "parts", resume=True, data=synthetic_splits(SHAPE, n=96), progress=False,
                  log=lambda line: None)
    assert all(r["ahead_of_time"] for r in whole.history)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _as_every_key(monkeypatch, tmp_path, contents: bytes) -> Path:
    """A private cache whose one package, `contents`, is what every key names."""
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(aot, "package_key", lambda *args: "the-one")
    path = aot.package_path("the-one")
    path.parent.mkdir(parents=True)
    path.write_bytes(contents)
    return path


def _rebuilt(tmp_path, model: dict, epochs: int, lines: list):
    """A compiling run misled by a wrong package, and the same config run again (which loads what the first built)."""
    misled = _fit(_config(epochs, model=model), tmp_path / "misled", lines)
    again_lines = []
    again = _fit(_config(epochs, model=model), tmp_path / "again", again_lines)
    assert not any(line.startswith("building") for line in again_lines)
    assert all(r["ahead_of_time"] for r in misled.history + again.history)
    assert _same_weights(misled.model.state_dict(), again.model.state_dict())


@pytest.mark.slow
@pytest.mark.compile
def test_a_package_of_another_model_is_deleted_and_built_again(package, tmp_path, monkeypatch):
    """A tanh network given the ReLU network's package (as a stale cache could): its first step disagrees with the
    eager forward pass, so it is deleted and the step built for this model, and the run is the one a clean cache
    gives."""
    if package[0] is None:
        pytest.skip("the package was built before this module ran")
    _as_every_key(monkeypatch, tmp_path, package[0].read_bytes())
    lines = []
    _rebuilt(tmp_path, {"activation": "tanh"}, 2, lines)
    assert any("gave loss terms" in line and "deleted, building it again" in line for line in lines)


@pytest.mark.slow
@pytest.mark.compile
def test_a_package_for_other_shapes_is_deleted_and_built_again(package, tmp_path, monkeypatch):
    if package[0] is None:
        pytest.skip("the package was built before this module ran")
    _as_every_key(monkeypatch, tmp_path, package[0].read_bytes())
    lines = []
    _rebuilt(tmp_path, {"hidden_dims": (12,)}, 1, lines)
    assert any("does not run on this model's tensors" in line and "building it again" in line for line in lines)


@pytest.mark.slow
@pytest.mark.compile
def test_a_package_that_does_not_load_is_deleted_and_built_again(package, tmp_path, monkeypatch):
    """A truncated package: deleted, and the step built again (here the build writes the fixture's package for this
    very config, the real build being what the two tests above run), then loaded, checked and trained with."""
    if package[0] is None:
        pytest.skip("the package was built before this module ran")
    path = _as_every_key(monkeypatch, tmp_path, b"half a package")
    built = []
    monkeypatch.setattr(aot, "build", lambda into, *args: built.append(into) or into.write_bytes(package[0].read_bytes()))
    lines = []
    result = _fit(_config(1), tmp_path / "run", lines)
    assert any("does not load" in line and "building it again" in line for line in lines)
    assert built == [path] and result.history[0]["ahead_of_time"]


def test_the_key_follows_what_shapes_the_graph_and_nothing_else():
    base = aot.config_material(_config())
    for same in (_config(9), _config(lr=0.1, seed=5, compile="auto", threads=1, max_minutes=3.0)):
        assert aot.config_material(same) == base
    for other in (_config(model={"activation": "tanh"}), _config(model={"latent_dim": 3}), _config(precision="bf16"),
                  _config(loss="iwae", mc_samples=2), _config(beta=4.0), _config(adam_eps=1e-4)):
        assert aot.config_material(other) != base
    module = torch.nn.Linear(3, 2)
    key = aot.package_key(base, module, print, {"x": torch.zeros(16, 3)})
    assert aot.package_key(base, module, print, {"x": torch.zeros(16, 3)}) == key
    assert aot.package_key(base, module, print, {"x": torch.zeros(8, 3)}) != key
    assert aot.package_key(base, torch.nn.Linear(3, 3), print, {"x": torch.zeros(16, 3)}) != key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)   # the kernels are built for a thread count
        assert aot.package_key(base, module, print, {"x": torch.zeros(16, 3)}) != key
    finally:
        torch.set_num_threads(threads)


def test_the_source_of_a_model_class_from_elsewhere_is_in_the_key(tmp_path, monkeypatch):
    plugin = tmp_path / "my_layers.py"
    plugin.write_text("import torch\nclass Twice(torch.nn.Module):\n    def forward(self, x):\n        return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_layers
    before = aot.source_digest(my_layers.Twice(), print)
    plugin.write_text(plugin.read_text().replace("2 * x", "3 * x"))
    aot._source_digest.cache_clear()
    assert aot.source_digest(my_layers.Twice(), print) != before
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)


@pytest.mark.compile
def test_auto_resumes_a_run_with_the_kind_of_step_it_had(package, tmp_path):
    """A run begun eagerly goes on eagerly under auto, though a step built ahead of time is there now: exactly the
    unbroken eager run."""
    whole = _fit(_config(2, compile="off"), tmp_path / "whole")
    _fit(_config(1, compile="off"), tmp_path / "parts")
    resumed = fit(_config(2, compile="auto"), tmp_path / "parts", resume=True, data=synthetic_splits(SHAPE, n=96),
                  progress=False, log=lambda line: None)
    assert not any(r["ahead_of_time"] for r in resumed.history)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.compile
def test_auto_resumes_a_compiled_run_with_the_compiled_step(package, tmp_path):
    """The converse: a run begun with --compile on goes on with the step built ahead of time when resumed under auto,
    short as its remainder is: exactly the unbroken compiled run."""
    whole = _fit(_config(2), tmp_path / "whole")
    _fit(_config(1), tmp_path / "parts")
    resumed = fit(_config(2, compile="auto"), tmp_path / "parts", resume=True, data=synthetic_splits(SHAPE, n=96),
                  progress=False, log=lambda line: None)
    assert all(r["ahead_of_time"] for r in resumed.history)
    assert _same_weights(whole.model.state_dict(), resumed.model.state_dict())


def test_the_cache_keeps_the_packages_used_last(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.pt2").write_bytes(b"x")
        os.utime(tmp_path / f"{i}.pt2", (1000 + i, 1000 + i))
    (tmp_path / "notes.txt").write_text("not a package")
    aot.prune(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.pt2", "3.pt2", "4.pt2", "notes.txt"]


def test_a_step_that_cannot_be_built_is_not_traced_again(tmp_path):
    path, tried = tmp_path / "steps" / "k.pt2", []

    def cannot(into):
        tried.append(into)
        raise aot.Unavailable("data-dependent shapes")

    for run in range(2):
        lines = []
        assert aot.AheadOfTime({}, log=lines.append).package(16, lambda: (path, cannot)) is None
        assert len(tried) == 1 and not path.exists()
        assert any("cannot be compiled ahead of time (data-dependent shapes" in line for line in lines)
        assert ("found before" in lines[-1]) == (run == 1)


@pytest.mark.compile
def test_a_diverging_run_on_it_skips_rolls_back_and_never_saves_non_finite_weights(package, tmp_path):
    """lr 1000 on the built step (the learning rate is not in its key): the finite check inside it leaves the state
    alone at each non-finite step, the guard rolls back (Adam's state replaced: the package must take the new
    tensors), and no checkpoint holds a non-finite number."""
    from vaekit.store.checkpoint import load_model
    from vaekit.training.guard import DivergedError, weights_finite
    lines = []
    try:
        result = _fit(_config(4, lr=1000.0), tmp_path / "run", lines)
        assert all(r["ahead_of_time"] for r in result.history)
        assert sum(r.get("skipped_steps", 0) for r in result.history) > 0
    except DivergedError:
        pass
    assert not any(line.startswith("building") for line in lines)   # the fixture's package
    assert any("rolled back" in line for line in lines)
    if (tmp_path / "run" / "checkpoint").is_dir():
        model, _, _ = load_model(tmp_path / "run")
        assert weights_finite(model)
