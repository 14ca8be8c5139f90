"""Users' own components (vaekit.plugins): a loss registered by the user's module trains from the command line with
--import, is recorded in the run's config.json, and later commands on the run either find it (--import, or an
installed entry point) or say in one line which module to load. Before, a run trained with a custom loss through
fit() could not be evaluated: "loss 'btcvae' is unknown"."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vaekit import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, evaluate_run, fit
from vaekit.errors import CheckpointError
from vaekit.models.objectives import LOSSES
from vaekit.plugins import import_modules

PLUGIN = textwrap.dedent('''
    """A user's loss: the ELBO with the KL term doubled (a beta-VAE of beta 2 by another name)."""
    from vaekit.models.objectives import LOSSES, elbo

    def doubled_kl(model, x, ctx):
        """The ELBO with twice the KL term (a plugin's loss, for the tests)."""
        terms = elbo(model, x, ctx)
        return {**terms, "loss": terms["recon"] + 2 * terms["kl"]}

    LOSSES["doubled-kl"] = doubled_kl
''')
TINY = ["--data", "digits", "--latent-dim", "2", "--hidden", "16", "--epochs", "1", "--no-progress", "--no-report"]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The module users_losses.py in a folder on sys.path (and PYTHONPATH, for the commands started here)."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "users_losses.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    yield folder
    LOSSES.pop("doubled-kl", None)
    sys.modules.pop("users_losses", None)


def _vaekit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vaekit", *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_a_run_records_the_plugin_modules_of_its_components(tmp_path, plugin):
    import_modules(["users_losses"])
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(16,)), DataConfig("digits"), TrainConfig(loss="doubled-kl", epochs=1))
    run = fit(config, tmp_path / "run", progress=False, log=lambda s: None).run_dir
    assert json.loads((run / "config.json").read_text())["plugins"] == ["users_losses"]
    assert evaluate_run(run)["loss_name"] == "doubled-kl"
    sys.modules.pop("users_losses")   # as in a new process that did not import it
    with pytest.raises(CheckpointError, match="plugin module 'users_losses', which is not loaded: pass --import users_losses"):
        evaluate_run(run)


def test_a_run_of_vaekit_s_own_components_records_no_plugins(tmp_path):
    run = fit(RunConfig(ModelConfig(latent_dim=2, hidden_dims=(16,)), DataConfig("digits"), TrainConfig(epochs=1)),
              tmp_path / "run", progress=False, log=lambda s: None).run_dir
    assert "plugins" not in json.loads((run / "config.json").read_text())


@pytest.mark.parametrize("name,message", [("no_such_module_here", r"cannot be imported \(ModuleNotFoundError"),
                                          ("../evil", "is not a module name")])
def test_a_bad_import_is_one_line(name, message):
    with pytest.raises(ConfigError, match=message):
        import_modules([name])


def test_a_config_with_impossible_plugins_is_refused():
    with pytest.raises(ConfigError, match="plugins="):
        RunConfig.from_dict({"plugins": ["os; rm -rf /"]})
    with pytest.raises(ConfigError, match="plugins="):
        RunConfig.from_dict({"plugins": "users_losses"})


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_command_line_trains_evaluates_and_names_the_missing_plugin(tmp_path, plugin):
    run = tmp_path / "run"
    r = _vaekit("train", "--import", "users_losses", "--loss", "doubled-kl", "--run-dir", run, *TINY)
    assert r.returncode == 0, r.stderr
    assert "doubled-kl loss" in r.stdout and json.loads((run / "config.json").read_text())["plugins"] == ["users_losses"]
    r = _vaekit("eval", run)   # without the module: one line that names it
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--import users_losses" in r.stderr, r.stderr
    r = _vaekit("eval", run, "--import", "users_losses", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["loss_name"] == "doubled-kl", r.stderr
    r = _vaekit("train", "--import", "no_such_module_here", "--run-dir", tmp_path / "other", *TINY)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no_such_module_here" in r.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_an_installed_plugin_needs_no_flag(tmp_path, plugin):
    """An entry point of the group vaekit.plugins (here in a dist-info folder on PYTHONPATH, as pip installs one)."""
    info = plugin / "users_losses-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: users-losses\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[vaekit.plugins]\nusers = users_losses\n")
    run = tmp_path / "run"
    r = _vaekit("train", "--loss", "doubled-kl", "--run-dir", run, *TINY)
    assert r.returncode == 0, r.stderr
    r = _vaekit("list")
    assert "doubled-kl" in r.stdout and "twice the KL term" in r.stdout
    assert _vaekit("eval", run).returncode == 0
