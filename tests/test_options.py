"""One source of truth for options: flags and help generated from the config fields, defaults that depend on
other options chosen in the library, --config files, and options that do nothing refused."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from conftest import synthetic_splits
from vaekit import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, fit, resolve
from vaekit.cli.main import build_parser, main
from vaekit.cli.options import config_from_args
from vaekit.config.schema import SECTIONS, flag_of
from vaekit.outputs.plots import PlotOptions

TINY = ["--data", "digits", "--val-size", "100", "--latent-dim", "2", "--hidden", "16", "--epochs", "1", "--no-progress",
        "--no-report"]


def quiet(config, run_dir, **kw):
    return fit(config, run_dir, progress=False, log=lambda s: None, **kw)


def subcommand(name: str):
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices[name]


@pytest.mark.parametrize("section", list(SECTIONS.values()) + [PlotOptions], ids=lambda c: c.__name__)
def test_every_config_field_is_a_flag_with_the_help_and_default_of_its_metadata(section):
    command = subcommand("plot" if section is PlotOptions else "train")
    flags = {opt: a for a in command._actions for opt in a.option_strings}
    for f in dataclasses.fields(section):
        if not f.metadata.get("cli", True):
            continue
        action = flags[flag_of(section, f.name)]
        assert action.help.startswith(f.metadata["help"].replace("%", "%%")) and "(default: " in action.help, f.name
        assert action.default is None        # only what is given overrides the config underneath
    text = " ".join(command.format_help().split())
    assert "discretised-logistic" in text or section is not ModelConfig   # --likelihood's help had drifted
    for action in subcommand("eval")._actions:   # eval's --split, --seed, --device had no help
        assert action.help, action.dest


def test_python_resolves_the_same_defaults_as_the_command_line():
    # an AE trains on its own loss; a table gets a Gaussian likelihood; from Python exactly as from the CLI
    ae = resolve(RunConfig(ModelConfig(model="ae"), DataConfig("digits")))
    assert ae.train.loss == "ae" and ae.model.likelihood == "bernoulli"
    args = build_parser().parse_args(["train", "--model", "ae", "--data", "digits"])
    assert resolve(config_from_args(args)) == ae
    table = resolve(RunConfig(data=DataConfig("csv", path="t.csv")))
    assert table.model.likelihood == "gaussian-learned" and table.train.loss == "elbo"


def test_a_config_file_reruns_a_run_and_flags_override_it(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", "--run-dir", str(first), *TINY, "--beta", "2"]) == 0
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.json"), "--run-dir", str(again), "--epochs", "2",
                 "--no-progress", "--no-report"]) == 0
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert b["train"]["epochs"] == 2 and b["train"]["beta"] == 2.0
    assert {**a, "train": {**a["train"], "epochs": 2}} == b
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "nope.json"), "--run-dir", str(tmp_path / "x")]) == 2
    assert "cannot read config" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags,message", [
    (["--e-steps", "3"], "--e-steps 3 (TrainConfig.e_steps) does nothing here: it applies to schedule alternating"),
    (["--gamma", "5"], "--gamma 5.0 (TrainConfig.gamma) does nothing here: it applies to loss capacity"),
    (["--codebook-size", "64"], "it applies to model vqvae"),
    (["--residual"], "it applies to architecture conv"),
    (["--obs-std", "0.2"], "it applies to likelihood gaussian or likelihood gaussian-learned"),
    (["--loss", "iwae", "--beta", "2"], "--beta 2.0 (TrainConfig.beta) does nothing here: it applies to loss elbo"),
    (["--early-stop", "2", "--val-size", "0"], "--early-stop (TrainConfig.early_stop) watches the validation loss"),
])
def test_flags_that_do_nothing_are_refused_and_leave_nothing_behind(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not run.exists()     # no config.json, no empty metrics.jsonl


def test_a_config_error_in_the_first_epoch_leaves_nothing_behind(tmp_path):
    # the 'vq' loss needs a codebook: the error comes from inside the first training step
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,)), DataConfig("digits"), TrainConfig(loss="vq", epochs=1))
    with pytest.raises(ConfigError, match="needs a codebook"):
        quiet(config, tmp_path / "run", data=synthetic_splits())
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()     # a folder the user made for the run: emptied again, not removed
    with pytest.raises(ConfigError):
        quiet(config, tmp_path / "empty", data=synthetic_splits())
    assert list((tmp_path / "empty").iterdir()) == []


def test_errors_name_the_python_field_and_the_flag():
    with pytest.raises(ConfigError, match=r"latent_dim=0 is impossible \(ModelConfig.latent_dim, --latent-dim\)"):
        ModelConfig(latent_dim=0)
    with pytest.raises(ConfigError, match=r"loss 'gan' is unknown \(TrainConfig.loss, --loss\)"):
        resolve(RunConfig(train=TrainConfig(loss="gan")))
    with pytest.raises(ConfigError, match=r"val_size=9999 \(DataConfig.val_size, --val-size\) leaves no training data"):
        quiet(RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,)), DataConfig("digits", val_size=9999)), "unused")


@pytest.mark.slow
@pytest.mark.subprocess
def test_usage_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vaekit", "train", "--latent-dim", "1e7"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "invalid int value" in r.stderr


def test_run_commands_take_an_options_object_or_its_fields_as_keywords():
    from vaekit import EvalOptions, SampleOptions, evaluate_run, sample_run
    from vaekit.config.schema import options_of

    assert options_of(EvalOptions, None, {"nll_k": 50}) == EvalOptions(nll_k=50)
    assert options_of(EvalOptions, EvalOptions(split="val"), {"seed": 3}) == EvalOptions(split="val", seed=3)
    for call, cls in ((evaluate_run, "EvalOptions"), (sample_run, "SampleOptions")):
        with pytest.raises(ConfigError, match=f"^nll: not an option of {cls}; its options are "):
            call("no-such-run", nll=5)   # refused before anything is read
    assert {f for f in SampleOptions.__dataclass_fields__} >= {"n", "out", "label", "checkpoint"}


def _whole_number_fields():
    """(section class, field, flag or None) for every whole-number field of the run config, tuples included."""
    import typing

    from vaekit.config.schema import MAX_INT
    out = []
    for section in SECTIONS.values():
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            if "int" in str(hints[f.name]) and "bool" not in str(hints[f.name]):
                flag = (f.metadata.get("flag") or "--" + f.name.replace("_", "-")) if f.metadata.get("cli", True) else None
                out.append(pytest.param(section, f.name, flag, f.metadata.get("maximum") or MAX_INT, id=f.name))
    return out


@pytest.mark.parametrize("section,name,flag,maximum", _whole_number_fields())
def test_every_whole_number_has_a_bound_the_machine_can_meet(tmp_path, capsys, section, name, flag, maximum):
    """One past the field's maximum, and a 23-digit number, are one-line errors from Python, a --config file and the
    command line alike (before: overflow tracebacks, or runs without end)."""
    import json

    hint = str(__import__("typing").get_type_hints(section)[name])
    for too_big in (maximum + 1, 99999999999999999999999):
        value = [[1, too_big]] if name == "batch_growth" else [too_big] if "tuple" in hint else too_big
        with pytest.raises(ConfigError, match=rf"^{name}=.* is impossible \({section.__name__}\.{name}.*use at most {maximum:,}$"):
            section(**{name: value})
        part = {"ModelConfig": "model", "DataConfig": "data", "TrainConfig": "train"}[section.__name__]
        (tmp_path / "c.json").write_text(json.dumps({part: {name: value}}))
        assert main(["train", "--config", str(tmp_path / "c.json"), "--run-dir", str(tmp_path / "r")]) == 2
        if flag is not None:
            values = ["1", str(too_big)] if name == "batch_growth" else [str(too_big)]
            assert main(["train", "--run-dir", str(tmp_path / "r"), "--data", "digits", flag, *values]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err and all(line.startswith("vaekit: error: ") and "use at most" in line for line in err)
    assert not (tmp_path / "r").exists()


def test_the_likelihood_estimate_has_a_bound():
    from vaekit import Dataset, build_model, log_likelihood
    from vaekit.evaluation.evaluate import MAX_K
    model = build_model(ModelConfig(latent_dim=2, hidden_dims=(4,), input_shape=(1, 2, 2)))
    for k in (MAX_K + 1, 10**23):
        with pytest.raises(ConfigError, match="is impossible: use at most 1,000,000"):
            log_likelihood(model, Dataset(torch.rand(3, 1, 2, 2)), k=k)
