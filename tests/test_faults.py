"""Bad inputs and faults, each from the command line in a fresh interpreter: a non-zero exit, one line on
stderr, no traceback, and nothing already written lost or changed (every file of the run and of the user's
folders is compared byte for byte before and after)."""

import builtins
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vaekit import MODELS
from vaekit.cli.main import main
from vaekit.store import checkpoint as checkpoint
from vaekit.store.metrics import run_numbers

TINY = ["--data", "digits", "--latent-dim", "2", "--hidden", "16", "--epochs", "1", "--no-progress", "--no-report"]

# A fresh interpreter whose network calls fail at once, and whose faults FAULT (an env variable) injects:
# 'enospc:NAME' makes writing a file called NAME fail as a full disk does.
PRELUDE = """
import errno, os, sys, builtins, urllib.request
urllib.request.urlopen = lambda *a, **k: (_ for _ in ()).throw(OSError('offline'))
fault = os.environ.get('FAULT', '')
if fault.startswith('enospc:'):
    name = fault.split(':', 1)[1]
    real_open, real_os_open = builtins.open, os.open
    def full(path, *a, **k):
        if os.path.basename(str(path)).startswith(name) and (len(a) and any(m in a[0] for m in 'wa') or k.get('mode', 'r') != 'r'):
            raise OSError(errno.ENOSPC, 'No space left on device', str(path))
        return real_open(path, *a, **k)
    builtins.open = full
    import safetensors.torch as st
    real_save = st.save_file
    from safetensors import SafetensorError
    def save_file(tensors, filename, metadata=None):
        if os.path.basename(str(filename)).startswith(name):   # what safetensors raises on a full disk
            raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
        return real_save(tensors, filename, metadata)
    st.save_file = save_file
    import vaekit.store.checkpoint as ck
    ck.save_file = save_file
if fault.startswith('enospc-tmp:'):
    import tempfile
    name, real_mkstemp = fault.split(':', 1)[1], tempfile.mkstemp
    def mkstemp(*a, **k):
        if str(k.get('prefix', '')).startswith(name):
            raise OSError(errno.ENOSPC, 'No space left on device', k.get('prefix'))
        return real_mkstemp(*a, **k)
    tempfile.mkstemp = mkstemp
from vaekit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def vaekit(*args, fault: str = "", cwd=None):
    env = {**os.environ, "FAULT": fault}
    return subprocess.run([sys.executable, "-c", PRELUDE, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd)


def snapshot(*folders: Path) -> dict:
    """Every file under the folders, by path: its bytes."""
    files = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and not p.is_symlink() and p.name != ".lock":   # the lock file holds the last trainer's pid
                files[str(p)] = p.read_bytes()
    return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    assert main(["train", "--run-dir", str(root / "run"), *TINY, "--val-size", "100"]) == 0
    table = root / "t.csv"
    rng = np.random.default_rng(0)
    table.write_text("a,b\n" + "\n".join(f"{x:.4f},{y:.4f}" for x, y in rng.normal(size=(60, 2))) + "\n")
    assert main(["train", "--run-dir", str(root / "table"), "--data", "csv", "--path", str(table), "--latent-dim", "1",
                 "--hidden", "8", "--epochs", "1", "--no-progress", "--no-report"]) == 0
    return root


def _nan_weights(run: Path) -> None:
    path = run / "checkpoint" / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    first = next(iter(tensors))
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(path), meta)


def _epoch_meta(value):
    def edit(run: Path) -> None:
        path = run / "checkpoint" / "model.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        if value is None:
            meta.pop("epoch")
        else:
            meta["epoch"] = value
        save_file(tensors, str(path), meta)
    return edit


def _config_edit(change):
    def edit(run: Path) -> None:
        c = json.loads((run / "config.json").read_text())
        change(c)
        (run / "config.json").write_text(json.dumps(c))
    return edit


def _config_text(change):
    def edit(run: Path) -> None:
        (run / "config.json").write_text(change((run / "config.json").read_text()))
    return edit


def _edit_safetensors(run: Path, name: str, change) -> None:
    path = run / "checkpoint" / name
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    save_file(tensors, str(path), meta)


def _bool_weights(run: Path) -> None:
    """A weight file of the right names and shapes whose first tensor is bool: loading used to cast it to 0s and 1s."""
    def change(tensors, meta):
        first = next(iter(tensors))
        tensors[first] = tensors[first] > 0
    _edit_safetensors(run, "model.safetensors", change)


def _damaged_trainer(run: Path) -> None:
    _edit_safetensors(run, "trainer.safetensors", lambda tensors, meta: meta.update(state=meta["state"][:40]))


def _deep_trainer(run: Path) -> None:
    _edit_safetensors(run, "trainer.safetensors", lambda tensors, meta: meta.update(state="[" * 100_000 + "]" * 100_000))


def _write(name: str, content):
    def make(t: Path) -> None:
        (t / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return make


def _folder_with(name: str):
    def make(t: Path) -> None:
        (t / "mine").mkdir()
        (t / "mine" / name).write_text("the user's own file")
    return make


def _png16(t: Path) -> None:
    (t / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(np.full((4, 4), 1000 * i, np.uint16)).save(t / "imgs" / f"{i}.png")


# (arguments with {run}, {table}, {t} for a scratch folder, what to prepare in it, part of the message, exit code)
CASES = [
    ("existing run", ["train", "--run-dir", "{run}", *TINY], None, "already holds a run"),
    ("run dir is a file", ["train", "--run-dir", "{t}/f", *TINY], _write("f", "x"), "is a file"),
    ("user's config.json", ["train", "--run-dir", "{t}/mine", *TINY], _folder_with("config.json"), "not a vaekit run"),
    ("user's report.html", ["train", "--run-dir", "{t}/mine", *TINY], _folder_with("report.html"), "not a vaekit run"),
    ("resume with run-dir", ["train", "--resume", "{run}", "--run-dir", "{t}/x"], None, "cannot be used with --resume"),
    ("resume with preset", ["train", "--resume", "{run}", "--preset", "digits"], None, "cannot be used with --resume"),
    ("resume changes lr", ["train", "--resume", "{run}", "--lr", "0.5"], None, "lr 0.001 -> 0.5"),
    ("resume nowhere", ["train", "--resume", "{t}/nowhere"], None, "does not exist"),
    ("resume foreign folder", ["train", "--resume", "{t}/mine"], _folder_with("notes.txt"), "no config.json"),
    ("latent 1e7 text", ["train", "--run-dir", "{t}/r", "--latent-dim", "1e7"], None, "invalid int value"),
    ("latent ten million", ["train", "--run-dir", "{t}/r", "--latent-dim", "10000000", *TINY[:2]], None, "use at most 65,536"),
    ("latent 0", ["train", "--run-dir", "{t}/r", "--latent-dim", "0", *TINY[:2]], None, "latent_dim=0 is impossible"),
    ("lr negative", ["train", "--run-dir", "{t}/r", "--lr", "-1", *TINY[:2]], None, "lr=-1.0 is impossible"),
    ("lr nan", ["train", "--run-dir", "{t}/r", "--lr", "nan", *TINY[:2]], None,
     "lr=nan is impossible (TrainConfig.lr, --lr): it must be a finite number"),
    ("epochs -1", ["train", "--run-dir", "{t}/r", "--epochs", "-1", *TINY[:2]], None, "epochs=-1 is impossible"),
    ("image size huge", ["train", "--run-dir", "{t}/r", "--data", "folder", "--path", "{t}", "--image-size", "100000"], None,
     "image_size=100000 is impossible"),
    ("csv beyond float32", ["train", "--run-dir", "{t}/r", "--data", "csv", "--path", "{t}/big.csv"],
     _write("big.csv", "a,b\n1,2\n3,1e39\n5,6\n7,8\n"), "beyond float32"),
    ("npy beyond float32", ["train", "--run-dir", "{t}/r", "--data", "npy", "--path", "{t}/big.npy"],
     lambda t: np.save(t / "big.npy", np.array([[1.0, 1e300]] * 6)), "beyond float32"),
    ("option that does nothing", ["train", "--run-dir", "{t}/r", "--e-steps", "3", *TINY], None, "does nothing here"),
    ("config float for int", ["train", "--config", "{t}/c.json", "--run-dir", "{t}/r"],
     _write("c.json", '{"model": {"latent_dim": 2.5}}'), "latent_dim=2.5 is impossible"),
    ("config null section", ["train", "--config", "{t}/c.json", "--run-dir", "{t}/r"], _write("c.json", '{"model": null}'),
     "a run config has the sections"),
    ("config not utf-8", ["train", "--config", "{t}/c.json", "--run-dir", "{t}/r"], _write("c.json", b"\xff\xfe{"),
     "cannot read config"),
    ("config string for number", ["train", "--config", "{t}/c.json", "--run-dir", "{t}/r"],
     _write("c.json", '{"train": {"lr": "fast"}}'), "lr='fast' is impossible"),
    ("config missing", ["train", "--config", "{t}/none.json", "--run-dir", "{t}/r"], None, "cannot read config"),
    ("unknown model", ["train", "--run-dir", "{t}/r", "--model", "gan", *TINY[:2]], None, "model 'gan' is unknown"),
    ("mnist offline", ["train", "--run-dir", "{t}/r", "--data", "mnist", "--data-dir", "{t}/empty"], None, "mnist is not in"),
    ("chunk size negative", ["eval", "{run}", "--nll-k", "10", "--chunk-size", "-5"], None, "chunk_size=-5 (--chunk-size) is impossible"),
    ("nll k zero", ["eval", "{run}", "--nll-k", "0"], None, "k=0 is impossible"),
    ("bad split", ["eval", "{run}", "--split", "train"], None, "invalid choice"),
    ("epoch meta abc", ["eval", "{run}"], _epoch_meta("abc"), "no valid epoch"),
    ("epoch meta missing", ["eval", "{run}"], _epoch_meta(None), "no valid epoch"),
    ("nan weights eval", ["eval", "{run}"], _nan_weights, "hold NaN or Inf"),
    ("nan weights sample", ["sample", "{run}", "--out", "{t}/s.png"], _nan_weights, "hold NaN or Inf"),
    ("nan weights plot", ["plot", "{run}", "--kind", "samples"], _nan_weights, "hold NaN or Inf"),
    ("nan weights report", ["report", "{run}"], _nan_weights, "hold NaN or Inf"),
    ("truncated weights", ["eval", "{run}"], lambda run: (run / "checkpoint" / "model.safetensors").write_bytes(b"\0" * 9),
     "corrupt"),
    ("checkpoint replaced by a file", ["eval", "{run}"],
     lambda run: (shutil.rmtree(run / "checkpoint"), (run / "checkpoint").write_text("x")), "holds no checkpoint"),
    ("too many samples", ["sample", "{run}", "-n", "100000000", "--out", "{t}/s.png"], None, "at most"),
    ("nrow negative", ["sample", "{run}", "--nrow", "-3", "--out", "{t}/s.png"], None, "nrow=-3 is impossible (SampleOptions.nrow, --nrow)"),
    ("nrow zero", ["sample", "{run}", "--nrow", "0", "--out", "{t}/s.png"], None, "nrow=0 is impossible (SampleOptions.nrow, --nrow)"),
    ("scale zero", ["sample", "{run}", "--scale", "0", "--out", "{t}/s.png"], None, "scale=0 is impossible (SampleOptions.scale, --scale)"),
    ("sample out is a folder", ["sample", "{run}", "--out", "{t}"], None, "is a folder"),
    ("data_dir of config.json", ["eval", "{run}"],
     _config_edit(lambda c: c["data"].update(source="mnist", data_dir="/nonexistent/vaekit-data")), "downloading is off"),
    ("figures symlink", ["plot", "{run}", "--out", "{t}/link"], lambda t: os.symlink(t / "elsewhere", t / "link"),
     "symbolic link"),
    ("changed csv", ["eval", "{table}"], None, "changed since it was trained"),
    ("disk full: metrics append", ["train", "--resume", "{run}", "--epochs", "2"], None, "the disk is full"),
    ("disk full: checkpoint", ["train", "--resume", "{run}", "--epochs", "2"], None, "the disk is full"),
    ("disk full: report", ["report", "{run}"], None, "the disk is full"),
    ("disk full: export hf", ["export", "{run}", "--format", "hf", "--out", "{t}/hf"], None, "the disk is full"),
    ("config of a huge model", ["eval", "{run}"], _config_edit(lambda c: c["model"].update(hidden_dims=[60000] * 3)),
     "parameters"),
    ("config huge input shape", ["sample", "{run}", "--out", "{t}/s.png"],
     _config_edit(lambda c: c["model"].update(input_shape=[3, 4096, 4096])), "parameters"),
    ("config flow steps 1e6", ["eval", "{run}"], _config_edit(lambda c: c["model"].update(posterior="iaf", flow_steps=10**6)),
     "use at most 64"),
    ("config 5000 digits", ["eval", "{run}"], _config_text(lambda t: t.replace('"latent_dim": 2', '"latent_dim": 1' + "0" * 5000)),
     "more than 4,300 digits"),
    ("config nested deeply", ["eval", "{run}"], _config_text(lambda t: "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    ("config section nested deeply", ["train", "--resume", "{run}", "--epochs", "2"],
     _config_text(lambda t: '{"model": ' + "[" * 100_000 + "]" * 100_000 + "}"), "nested too deeply"),
    ("input shape changed", ["eval", "{run}"], _config_edit(lambda c: c["model"].update(input_shape=[1, 9, 9])), "do not fit"),
    ("bool weights", ["eval", "{run}"], _bool_weights, "is torch.bool, the model holds torch.float32"),
    ("trainer state damaged", ["train", "--resume", "{run}", "--epochs", "2"], _damaged_trainer, "trainer state"),
    ("trainer state nested deeply", ["train", "--resume", "{run}", "--epochs", "2"], _deep_trainer, "nested too deeply"),
    ("max parameters zero", ["eval", "{run}", "--max-parameters", "0"], None, "--max-parameters 0 is impossible"),
]
FAULTS = {"disk full: metrics append": "enospc:metrics.jsonl", "disk full: checkpoint": "enospc:model.safetensors",
          "disk full: report": "enospc-tmp:.report.html", "disk full: export hf": "enospc:model.safetensors"}
TARGETS_RUN = {"config of a huge model", "config huge input shape", "config flow steps 1e6", "config 5000 digits",
               "config nested deeply", "config section nested deeply", "input shape changed", "bool weights",
               "trainer state damaged", "trainer state nested deeply",
               "epoch meta abc", "epoch meta missing", "nan weights eval", "nan weights sample", "nan weights plot",
               "nan weights report", "truncated weights", "checkpoint replaced by a file", "data_dir of config.json"}


def inject(monkeypatch, fault: str) -> None:
    """The faults of PRELUDE, in this process: 'enospc:NAME' (writing a file NAME... fails as on a full disk),
    'enospc-tmp:PREFIX' (creating an atomic writer's temporary file fails so)."""
    kind, _, name = fault.partition(":")

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    if kind == "enospc":
        real_open = builtins.open

        def opener(path, mode="r", *a, **k):
            if os.path.basename(str(path)).startswith(name) and any(m in mode for m in "wa"):
                full(path)
            return real_open(path, mode, *a, **k)
        monkeypatch.setattr(builtins, "open", opener)
        real_save = checkpoint.save_file
        def save_full(t, f, m=None):   # safetensors reports a full disk as its own error, not OSError
            if os.path.basename(str(f)).startswith(name):
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            return real_save(t, f, m)
        monkeypatch.setattr(checkpoint, "save_file", save_full)
    elif kind == "enospc-tmp":
        real_mkstemp = tempfile.mkstemp
        monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: full(k.get("prefix")) if str(k.get("prefix", "")).startswith(name)
                            else real_mkstemp(*a, **k))


def run_main(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:          # argparse's usage errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name,args,prepare,message", CASES, ids=[c[0] for c in CASES])
def test_a_fault_is_one_line_and_loses_nothing(tmp_path, trained, monkeypatch, capsys, name, args, prepare, message):
    run, table, scratch = tmp_path / "run", tmp_path / "table", tmp_path / "t"
    shutil.copytree(trained / "run", run)
    shutil.copytree(trained / "table", table)
    scratch.mkdir()
    if name == "changed csv":       # the table's data file, edited after training
        config = json.loads((table / "config.json").read_text())
        Path(config["data"]["path"]).write_text(Path(config["data"]["path"]).read_text().replace("a,b", "a,b", 1) + "1,1\n")
    if prepare is not None:
        prepare(run if name in TARGETS_RUN else scratch)
    before = snapshot(run, table, scratch)
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    inject(monkeypatch, FAULTS.get(name, ""))
    code, err = run_main([a.format(run=run, table=table, t=scratch) for a in args], capsys)   # a traceback would raise
    monkeypatch.undo()
    assert code != 0 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    after = snapshot(run, table, scratch)
    changed = [p for p in before if after.get(p) != before[p]]
    if name.startswith("disk full: ") and name != "disk full: report":
        changed = [p for p in changed if not p.endswith("metrics.jsonl")]   # a torn append is read tolerantly
    assert changed == [], changed
    assert not [p for p in after if p not in before and "/.lock" not in p and not p.endswith("metrics.jsonl")]
    if name == "data_dir of config.json":
        assert not Path("/nonexistent/vaekit-data").exists()


def test_the_cases_are_at_least_forty():
    assert len(CASES) >= 40


def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, trained, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    inject(monkeypatch, "enospc:metrics.jsonl")
    code, err = run_main(["train", "--resume", str(run), "--epochs", "3", "--no-progress", "--no-report"], capsys)
    monkeypatch.undo()
    assert code == 2 and "the disk is full" in err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress", "--no-report"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_torn_metrics_line_is_dropped_and_reported(tmp_path, trained, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_loss": 12')          # a full disk cut this append
    assert main(["plot", str(run), "--kind", "curves"]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress", "--no-report"]) == 0
    assert "dropped 1 unreadable line(s) (line 2)" in capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path):
    from vaekit import DataConfig, load_data
    _png16(tmp_path)
    data = load_data(DataConfig("folder", path=str(tmp_path / "imgs"), val_size=0, test_fraction=0.25))
    values = sorted({round(v, 3) for v in torch.cat([data.train.examples(), data.test.examples()]).flatten().tolist()})
    assert values == [round(round(1000 * i * 255 / 65535) / 255, 3) for i in range(4)]   # before: every pixel 1.0


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_trainers_on_one_run_directory_exactly_one_trains(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--run-dir", run, "--data", "digits", "--latent-dim", "2", "--hidden", "16", "--epochs", "3",
            "--no-report"]
    procs = [subprocess.Popen([sys.executable, "-c", PRELUDE, *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert ("is being trained by process" in loser or "already holds a run" in loser) and "Traceback" not in loser
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert main(["eval", str(run)]) == 0


@pytest.mark.slow
def test_resume_while_the_run_trains_is_refused(tmp_path, trained):
    from vaekit.store.rundir import RunLock
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    with RunLock(run):
        r = vaekit("train", "--resume", run, "--epochs", "2")
    assert r.returncode == 2 and f"is being trained by process {os.getpid()}" in r.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


# ----------------------------------------------------------------------------- interrupted and poisoned runs

def _quiet(config, run_dir, **kw):
    from vaekit import fit
    return fit(config, run_dir, progress=False, log=kw.pop("log", lambda s: None), **kw)


def _same_run(a, b):
    for k, v in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v), k
    assert run_numbers(a.history) == run_numbers(b.history)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_a_kill_after_a_mid_epoch_checkpoint_resumes_bit_exactly(tmp_path, monkeypatch, model):
    """Every model family (the README's promise); the VQ-VAE's code prior after training is killed and finished in
    its own test below."""
    from vaekit import DataConfig, ModelConfig, RunConfig, TrainConfig, load_data
    from vaekit.training import fit as train_module

    data_cfg = DataConfig("digits", pixels="dynamic", val_size=100)
    data = load_data(data_cfg)
    upper = {"upper_latent_dims": (2,), "upper_hidden_dims": (16,)} if model == "hvae" else {}
    config = RunConfig(ModelConfig(model=model, latent_dim=2, hidden_dims=(16,), **upper), data_cfg,
                       TrainConfig(epochs=3, batch_size=64, checkpoint_every=1e-9,   # a checkpoint after every step
                                   **({"prior_epochs": 1} if MODELS[model].discrete else {})))
    straight = _quiet(config, tmp_path / "a", data=data)
    real, saves = train_module.save_position, []

    def killed_after_the_30th_save(s, *args):
        real(s, *args)
        saves.append(1)
        if len(saves) == 30:           # epoch 2, step 8 of 22: as if SIGKILL came right after the write
            raise SystemExit("killed")
    monkeypatch.setattr(train_module, "save_position", killed_after_the_30th_save)
    with pytest.raises(SystemExit):
        _quiet(config, tmp_path / "b", data=data)
    monkeypatch.undo()
    _same_run(straight, _quiet(config, tmp_path / "b", data=data, resume=True))


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigterm_saves_the_position_says_how_to_resume_and_exits_143(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--run-dir", run, "--data", "digits", "--latent-dim", "2", "--hidden", "16", "--epochs", "400",
            "--no-report"]
    proc = subprocess.Popen([sys.executable, "-c", PRELUDE, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 2/"):
            break
    proc.send_signal(15)
    code, err = proc.wait(timeout=60), proc.stderr.read()
    assert code == 143 and err.startswith("vaekit: stopped by SIGTERM in epoch ") and len(err.strip().splitlines()) == 1
    assert f"vaekit train --resume {run}" in err
    assert main(["train", "--resume", str(run), "--epochs", "4", "--no-progress", "--no-report"]) == 0
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def _flaky_loss(bad_steps):
    from vaekit.models.objectives import elbo, reads
    calls = []

    @reads("beta", "kl_warmup_epochs", "mc_samples", "kl")
    def flaky(model, x, ctx):
        """The ELBO, with NaN for the training steps in `bad_steps`."""
        terms = elbo(model, x, ctx)
        if model.training:
            calls.append(1)
            if bad_steps(len(calls)):
                terms = {**terms, "loss": terms["loss"] * float("nan")}
        return terms
    return flaky


def test_a_few_non_finite_steps_are_skipped(tmp_path, monkeypatch):
    from vaekit import LOSSES, DataConfig, ModelConfig, RunConfig, TrainConfig
    from vaekit.training.guard import weights_finite
    monkeypatch.setitem(LOSSES, "flaky", _flaky_loss(lambda step: 5 <= step < 8))
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(16,)), DataConfig("digits"), TrainConfig(loss="flaky", epochs=1))
    result = _quiet(config, tmp_path / "run")
    assert result.history[-1]["skipped_steps"] == 3 and result.history[-1]["rollbacks"] == 0
    assert weights_finite(result.model) and np.isfinite(result.history[-1]["train_loss"])


def test_persistent_non_finite_steps_roll_back_then_stop_with_a_finite_resumable_run(tmp_path, monkeypatch):
    from vaekit import LOSSES, DataConfig, ModelConfig, RunConfig, TrainConfig, load_model
    from vaekit.training.guard import DivergedError, weights_finite
    monkeypatch.setitem(LOSSES, "flaky", _flaky_loss(lambda step: step > 11))    # from epoch 2 on (11 steps an epoch)
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(16,)), DataConfig("digits"),
                       TrainConfig(loss="flaky", epochs=5, checkpoint_every=60.0))
    lines = []
    with pytest.raises(DivergedError, match="training diverged"):
        _quiet(config, tmp_path / "run", log=lines.append)
    assert sum("rolled back" in line for line in lines) >= 1      # with a 10x lower learning rate each time
    model, _, epoch = load_model(tmp_path / "run")
    assert epoch == 1 and weights_finite(model)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_huge_learning_rate_never_saves_non_finite_weights(tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_main(["train", "--run-dir", str(run), "--data", "digits", "--latent-dim", "2", "--hidden", "16",
                          "--epochs", "3", "--lr", "1000", "--no-report", "--no-progress"], capsys)
    assert code == 0 or (code == 2 and "training diverged" in err)
    if (run / "checkpoint").is_dir():
        from vaekit import load_model
        load_model(run)            # refuses non-finite weights: none were written


def test_the_guard_judges_flags_read_in_batches_as_it_would_one_by_one():
    """Guard.record_all: the steps' flags as the host reads them, a list at a time. 25 bad steps in one list roll back
    once (the 15 after the 10th ran before the roll-back: counted as skipped, not judged again); a run of bad steps
    split across two lists counts as one run."""
    from vaekit.training.guard import MAX_BAD_STEPS, Guard
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = Guard(net, opt, log=lambda s: None)
    guard.snapshot()
    guard.record_all([1.0] * 3 + [0.0] * 25 + [1.0])
    assert (guard.skipped, guard.rollbacks, guard.lr_scale) == (25, 1, 0.1)
    guard.record_all([0.0] * (MAX_BAD_STEPS - 1))
    assert guard.rollbacks == 1 and guard.bad_in_a_row == MAX_BAD_STEPS - 1
    guard.record_all([0.0, 1.0])
    assert guard.rollbacks == 2 and guard.skipped == 25 + MAX_BAD_STEPS


def test_the_host_reads_the_guards_flags_every_read_every_steps_not_every_step(tmp_path, monkeypatch):
    """Sums stay on the device; the flags come to the host READ_EVERY at a time (and at the epoch's end). With NaN in
    steps 5-7 of a 3-at-a-time read the skipped steps and the sums are those of a step-by-step read."""
    from vaekit import LOSSES, DataConfig, ModelConfig, RunConfig, TrainConfig
    from vaekit.training import fit as train_module
    from vaekit.training.guard import Guard
    reads = []
    real = Guard.record_all
    monkeypatch.setattr(Guard, "record_all", lambda self, flags: reads.append(len(flags)) or real(self, flags))
    histories = []
    for every in (1, 3):
        monkeypatch.setattr(train_module, "READ_EVERY", every)
        monkeypatch.setitem(LOSSES, "flaky", _flaky_loss(lambda step: 5 <= step < 8))
        config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(16,)), DataConfig("digits"),
                           TrainConfig(loss="flaky", epochs=1, batch_size=128))   # 11 steps
        reads.clear()
        histories.append(_quiet(config, tmp_path / f"every-{every}").history)
        assert reads == ([1] * 11 if every == 1 else [3, 3, 3, 2])
    one, three = histories
    assert one[-1]["skipped_steps"] == three[-1]["skipped_steps"] == 3
    assert one[-1]["train_loss"] == three[-1]["train_loss"]


def _diverging(epochs: int, **train):
    """digits with lr 3: a streak of non-finite steps in epoch 2, which the guard rolls back from (fp32, one thread)."""
    from vaekit import DataConfig, RunConfig, TrainConfig
    return RunConfig(data=DataConfig("digits"), train=TrainConfig(epochs=epochs, lr=3.0, precision="fp32", threads=1,
                                                                 compile="off", **train))


@pytest.mark.slow
def test_the_guard_with_mid_epoch_checkpoints_trains_as_without_them(tmp_path):
    """A checkpoint every step never becomes the state a streak of non-finite steps started from: before, each
    roll-back returned to that state, and the run diverged where one without mid-epoch checkpoints trains."""
    from vaekit import fit
    plain = fit(_diverging(3), tmp_path / "plain", progress=False, log=lambda line: None)
    often = fit(_diverging(3, checkpoint_every=1e-6), tmp_path / "often", progress=False, log=lambda line: None)
    assert plain.history[-1].get("rollbacks", 0) >= 1   # the case this test is about happened
    for a, b in zip(plain.history, often.history, strict=True):
        assert a["train_loss"] == b["train_loss"] and a.get("rollbacks") == b.get("rollbacks")


@pytest.mark.slow
def test_a_resumed_run_keeps_the_guards_counts_and_budget(tmp_path):
    """The guard's skipped steps, roll-backs and learning-rate factor are part of the checkpoint: a run stopped after
    its roll-back and resumed writes the metrics and weights of one never stopped."""
    from vaekit import fit
    whole = fit(_diverging(3), tmp_path / "whole", progress=False, log=lambda line: None)
    fit(_diverging(2), tmp_path / "parts", progress=False, log=lambda line: None)
    resumed = fit(_diverging(3), tmp_path / "parts", resume=True, progress=False, log=lambda line: None)
    assert whole.history[-1].get("rollbacks", 0) >= 1
    assert run_numbers(whole.history) == run_numbers(resumed.history)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_a_vq_vae_stopped_while_fitting_its_code_prior_is_refused_then_finished_by_resume(tmp_path, monkeypatch):
    """Killed after its last epoch, while its code prior was being fitted: eval and sample refuse the run in one line
    (before, they used the untrained prior without a word), and a resume fits the prior (before: 'nothing to train'),
    to the weights of a run never stopped."""
    from vaekit import CheckpointError, DataConfig, ModelConfig, RunConfig, TrainConfig, evaluate_run, fit, sample_run
    from vaekit.models.family import VQVAE
    config = RunConfig(ModelConfig(model="vqvae", latent_dim=4, hidden_dims=(16,)), DataConfig("digits"),
                       TrainConfig(epochs=2, prior_epochs=1, precision="fp32", threads=1, compile="off"))
    quiet = {"progress": False, "log": lambda line: None}
    whole = fit(config, tmp_path / "whole", **quiet)
    real = VQVAE.after_training

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt   # as SIGKILL would, while the prior is fitted
    monkeypatch.setattr(VQVAE, "after_training", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "stopped", **quiet)
    for refused in (lambda: evaluate_run(tmp_path / "stopped"), lambda: sample_run(tmp_path / "stopped", n=4,
                                                                                    out=tmp_path / "s.png"),
                    lambda: evaluate_run(tmp_path / "stopped", checkpoint="best")):
        with pytest.raises(CheckpointError, match="vaekit train --resume"):
            refused()
    monkeypatch.setattr(VQVAE, "after_training", real)
    lines = []
    resumed = fit(config, tmp_path / "stopped", resume=True, progress=False, log=lines.append)
    assert any("doing it now" in line for line in lines)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert evaluate_run(tmp_path / "stopped")["codes"] == evaluate_run(tmp_path / "whole")["codes"]


def test_the_temporary_folders_of_a_killed_export_or_prepare_are_removed_by_the_next(tmp_path):
    """Before, a SIGKILL during `vaekit export` or `vaekit prepare` left its hidden temporary folder beside OUT for
    good (the atomic files already cleaned up after their killed writers)."""
    from vaekit import prepare
    from vaekit.data.sources.arrays import Arrays
    from vaekit.files import new_folder
    dead = 2**22 + 12345   # beyond Linux's largest pid: no process has it
    for left in (f".export.{dead}.k3j2.tmp", f".data.{dead}.tmp"):
        (tmp_path / left).mkdir()
        (tmp_path / left / "half.onnx").write_bytes(b"half")
    alive = tmp_path / f".export.{os.getppid()}.x7.tmp"   # a writer still at work: left alone
    alive.mkdir()
    with new_folder(tmp_path / "export", "export") as tmp:
        (tmp / "encoder.onnx").write_bytes(b"x")
    images = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    prepare(Arrays(images, None, images, None, scale=255.0), tmp_path / "data", "tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", "data", alive.name])


def test_running_out_of_memory_is_one_line_and_leaves_no_run(tmp_path, monkeypatch, capsys):
    """The sizes that used to exhaust memory are refused by their bounds now; the handler of a real MemoryError stays:
    one line, nothing left behind."""
    from vaekit.training import fit as fit_module

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(fit_module, "build_model", no_memory)
    assert main(["train", "--run-dir", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaekit: error: not enough memory")
    assert not (tmp_path / "r").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, where this test may mount one (root on Linux); elsewhere the injected cases above stand in."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the injected full-disk cases cover it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """A file that takes all of disk's free space but `leave` bytes."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.mark.slow
def test_a_really_full_disk_is_one_line_and_the_last_checkpoint_stays(tmp_path, small_disk, capsys):
    """safetensors reports a full disk as SafetensorError, not OSError: it used to end the run with a traceback and
    leave its part-written .checkpoint.tmp/ taking the space. Here the disk is really full (a tmpfs): the checkpoint
    (about 300 KB) does not fit, the metrics line does."""
    run = small_disk / "run"
    assert main(["train", "--run-dir", str(run), *TINY[:4], "--hidden", "256", "--epochs", "1", "--no-progress",
                 "--no-report"]) == 0
    before = snapshot(run / "checkpoint")
    filler = _fill(small_disk, leave=64 * 1024)
    code, err = run_main(["train", "--resume", str(run), "--epochs", "2", "--no-progress", "--no-report"], capsys)
    assert code == 2 and "the disk is full" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(run / "checkpoint") == before and not (run / ".checkpoint.tmp").exists()
    code, err = run_main(["export", str(run), "--format", "hf", "--out", str(small_disk / "hf")], capsys)
    assert code == 2 and "the disk is full" in err and len(err.strip().splitlines()) == 1, err
    assert not (small_disk / "hf").exists() and not list(small_disk.glob(".hf.*"))
    filler.unlink()
    assert main(["eval", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress", "--no-report"]) == 0


def test_a_reader_that_meets_a_checkpoint_swap_reads_the_new_checkpoint(tmp_path, trained, monkeypatch):
    """Between choosing checkpoint/ and opening its file a trainer may swap it (checkpoint/ -> .checkpoint.old/, the new
    one in, the old one removed): the reader used to call the run corrupt; now it chooses again."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    os.replace(run / "checkpoint", run / ".checkpoint.old")      # the trainer is between its two renames...
    shutil.copytree(run / ".checkpoint.old", run / ".checkpoint.tmp")
    real_read, swaps = checkpoint._read, []

    def read_while_swapping(path):
        if not swaps:   # ... and finishes the swap just as the reader opens the old folder's file
            swaps.append(path)
            os.replace(run / ".checkpoint.tmp", run / "checkpoint")
            shutil.rmtree(run / ".checkpoint.old")
        return real_read(path)
    monkeypatch.setattr(checkpoint, "_read", read_while_swapping)
    model, config, epoch = checkpoint.load_model(run)
    assert epoch == 1 and swaps and ".checkpoint.old" in str(swaps[0])
    (run / "checkpoint" / "model.safetensors").unlink()   # a folder that stands still, with its file gone: no retries
    with pytest.raises(checkpoint.CheckpointError, match="is missing"):
        checkpoint.load_model(run)


def test_max_parameters_refuses_and_allows(tmp_path, capsys, monkeypatch):
    """The parameter count is taken from the config on the meta device before anything is built: a model above the
    limit is refused in one line from train (and from every command that loads one), and --max-parameters allows it."""
    from vaekit import ModelConfig
    from vaekit.models.family import LIMIT_VARIABLE, parameter_count
    config = ModelConfig(input_shape=(1, 8, 8), latent_dim=2, hidden_dims=(16,))
    assert parameter_count(config) == sum(p.numel() for p in __import__("vaekit").build_model(config).parameters())
    monkeypatch.delenv(LIMIT_VARIABLE, raising=False)
    code, err = run_main(["train", "--run-dir", str(tmp_path / "r"), *TINY, "--max-parameters", "1000"], capsys)
    assert code == 2 and "more than the limit of 1,000" in err and not (tmp_path / "r").exists()
    assert main(["train", "--run-dir", str(tmp_path / "r"), *TINY, "--max-parameters", "100000"]) == 0
    code, err = run_main(["eval", str(tmp_path / "r"), "--max-parameters", "1000"], capsys)
    assert code == 2 and "parameters" in err


def test_sample_replaces_an_existing_file_only_with_force(tmp_path, trained, capsys):
    """`vaekit sample` overwrote the user's file of the same name (samples.png by default) without a word."""
    out = tmp_path / "samples.png"
    out.write_bytes(b"the user's own picture")
    code, err = run_main(["sample", str(trained / "run"), "--out", str(out)], capsys)
    assert code == 2 and "exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"the user's own picture"
    assert main(["sample", str(trained / "run"), "--out", str(out), "--force"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_errors_raised_in_python_name_the_python_argument(tmp_path, trained):
    """A Python caller used to read '-n 0 is impossible' or '--chunk-size -5': the flag, not the keyword it passed."""
    from vaekit import evaluate_run, sample_run
    from vaekit.errors import ConfigError
    run = trained / "run"
    with pytest.raises(ConfigError, match=r"^n=0 is impossible \(SampleOptions\.n, -n\)"):
        sample_run(run, n=0, out=tmp_path / "s.png")
    with pytest.raises(ConfigError, match=r"^temperature=-1 is impossible \(SampleOptions\.temperature, --temperature\)"):
        sample_run(run, temperature=-1, out=tmp_path / "s.png")
    with pytest.raises(ConfigError, match=r"^label=3 \(--label\)"):
        sample_run(run, label=3, out=tmp_path / "s.png", log=None)
    with pytest.raises(ConfigError, match=r"^chunk_size=-5 \(--chunk-size\)"):
        evaluate_run(run, nll_k=10, chunk_size=-5)
    with pytest.raises(ConfigError, match=r"^checkpoint='nope' \(--checkpoint\)"):
        checkpoint.load_model(run, checkpoint="nope")
