"""Several processes (torchrun, gloo on CPU): each takes its rows of every global batch with the noise one process
would draw for them, so 2 processes train the weights 1 process trains (up to the order of float sums); a killed
2-process run resumes bit-exactly; a failure in one process stops all with one line."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_step import _model_and_batch
from test_step import _variants as every_variant
from vaekit import DataConfig, TrainConfig, load_data
from vaekit.cli.main import main
from vaekit.data.dataset import batches, shard_batches
from vaekit.distributed import World
from vaekit.models.distributions import DiagonalGaussian, batch_shard
from vaekit.models.objectives import LossContext, get_loss
from vaekit.store.checkpoint import has_checkpoint, load_model
from vaekit.store.metrics import read_metrics
from vaekit.training.step import LossTerms, forward_backward

TINY = ["--data", "digits", "--latent-dim", "2", "--hidden", "16", "--precision", "fp32", "--batch-size", "64",
        "--no-report", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize("n", [1, 5, 64, 65])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_the_processes_rows_cover_a_batch_once(n, size):
    rows = [World(r, size).rows(n) for r in range(size)]
    assert rows[0][0] == 0 and rows[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert max(hi - lo for lo, hi in rows) - min(hi - lo for lo, hi in rows) <= 1


@pytest.mark.parametrize("binarise", [False, True])
def test_two_processes_see_the_batches_of_one(binarise):
    ds = load_data(DataConfig("digits", val_size=100, pixels="dynamic" if binarise else "grey")).train
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))
    one = list(batches(ds, 64, torch.Generator().manual_seed(2), order=order))
    parts = [list(shard_batches(ds, 64, World(r, 2), torch.Generator().manual_seed(2), order=order)) for r in range(2)]
    assert len(one) == len(parts[0]) == len(parts[1])
    for (x, y), (x0, y0, s0), (x1, y1, s1) in zip(one, *parts, strict=True):
        assert s0[1] == s1[0] and s0[2] == s1[2] == len(x)
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_inside_a_batch_shard_the_noise_is_the_rows_of_the_whole_draw():
    q_all = DiagonalGaussian(torch.zeros(10, 3), torch.zeros(10, 3))
    torch.manual_seed(5)
    whole = q_all.rsample(4)                                   # (4, 10, 3)
    q_mine = DiagonalGaussian(torch.zeros(4, 3), torch.zeros(4, 3))
    torch.manual_seed(5)
    with batch_shard(6, 10, 10):
        mine = q_mine.rsample(4)
    assert torch.equal(mine, whole[:, 6:10])


def _vaekit(*args: str, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vaekit", "train", *args], env=env, capture_output=True, text=True,
                           timeout=180, **kw)


def _weights(run):
    model, _, epoch = load_model(run)
    return epoch, model.state_dict()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
@pytest.mark.parametrize("model", ["vqvae"])   # the VAE: in the killed-run test below
def test_two_processes_train_the_weights_of_one(tmp_path, model):
    extra = ["--model", model] + (["--codebook-ema", "--prior-epochs", "0"] if model == "vqvae" else [])
    assert main(["train", "--run-dir", str(tmp_path / "one"), "--epochs", "2", *TINY, *extra]) == 0
    two = _vaekit("--nproc", "2", "--run-dir", str(tmp_path / "two"), "--epochs", "2", *TINY, *extra)
    assert two.returncode == 0, two.stderr
    assert "2 processes" in two.stdout and two.stdout.count("epoch 2/2") == 1   # process 0 alone logs
    (e1, w1), (e2, w2) = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert e1 == e2 == 2
    # a VQ-VAE's nearest-code choice can turn a last-bit difference of an encoder output near a tie into another
    # code for that vector (measured: one vector moved between codes 66 and 79 of 128): its codebook statistics
    # must agree on all but a few codes, everything else as closely as the VAE's
    for k in w1:
        if k.startswith("quantiser."):
            differ = (w2[k].float() - w1[k].float()).abs().reshape(max(1, len(w1[k].reshape(-1, *w1[k].shape[1:]))), -1).amax(1) > 1e-4
            assert differ.sum() <= 4, (k, differ.nonzero().tolist())
        else:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    m1, m2 = (read_metrics(tmp_path / r) for r in ("one", "two"))
    for a, b in zip(m1, m2, strict=True):
        for k in ("train_loss", "train_recon", "val_loss", "val_neg_elbo"):
            assert a[k] == pytest.approx(b[k], rel=1e-4)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.compile
@pytest.mark.subprocess
def test_two_compiled_processes_take_one_graph_steps_and_train_the_weights_of_one(tmp_path):
    """--compile on with several processes: forward, backward and Adam in one graph per process, the gradients summed
    over the processes inside it (Inductor for real, in both processes and in the one-process run it is held to)."""
    flags = [*TINY, "--epochs", "2", "--compile", "on"]
    two = _vaekit("--nproc", "2", "--run-dir", str(tmp_path / "two"), *flags)
    assert two.returncode == 0, two.stderr
    assert "compiled step, 2 processes" in two.stdout and "note:" not in two.stdout + two.stderr
    assert main(["train", "--run-dir", str(tmp_path / "one"), *flags]) == 0
    (e1, w1), (e2, w2) = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert e1 == e2 == 2
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    assert [r["compiled"] for r in read_metrics(tmp_path / "two")] == [True, True]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_a_killed_two_process_run_resumes_bit_exactly(tmp_path):
    """Also: the uninterrupted 2-process VAE trains the weights 1 process trains, up to the order of sums, with a
    batch that grows in its last epoch."""
    flags = [*TINY, "--epochs", "3", "--checkpoint-every", "0.0001",    # a checkpoint at every step
             "--batch-size-from", "2", "128"]
    whole = _vaekit("--nproc", "2", "--run-dir", str(tmp_path / "whole"), *flags)
    assert whole.returncode == 0, whole.stderr
    assert "2 processes" in whole.stdout and whole.stdout.count("epoch 3/3") == 1   # process 0 alone logs
    assert main(["train", "--run-dir", str(tmp_path / "one"), *flags]) == 0
    (_, w1), (_, w2) = _weights(tmp_path / "one"), _weights(tmp_path / "whole")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "vaekit", "train", "--nproc", "2", "--run-dir", str(run), *flags],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not has_checkpoint(run):   # metrics.jsonl comes first
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)   # torchrun and both processes, wherever they are
    proc.wait()
    assert len(read_metrics(run)) < 3, "the kill came after the run had finished"
    resumed = _vaekit("--nproc", "2", "--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    (e1, w1), (e2, w2) = _weights(tmp_path / "whole"), _weights(run)
    assert e1 == e2 == 3
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert main(["eval", str(run)]) == 0   # one process evaluates a run that two trained, and trains it on
    assert main(["train", "--resume", str(run), "--epochs", "4", "--no-progress", "--no-report"]) == 0


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_a_failure_in_one_process_stops_them_all_with_one_line(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    t0 = time.monotonic()
    r = _vaekit("--nproc", "2", "--run-dir", str(foreign), *TINY, "--epochs", "1")
    assert r.returncode != 0 and time.monotonic() - t0 < 60
    errors = [line for line in r.stderr.splitlines() if line.startswith("vaekit: error:")]
    assert errors and all("not a vaekit run" in line or str(foreign) in line for line in errors)
    assert "Traceback" not in r.stderr
    assert (foreign / "notes.txt").read_text() == "not a run" and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_nproc_and_run_dir_errors(tmp_path, capsys):
    assert main(["train", "--nproc", "0", *TINY]) == 2
    assert "--nproc 0 is impossible" in capsys.readouterr().err
    assert main(["train", "--nproc", str(os.cpu_count() + 1), *TINY, "--device", "cpu"]) == 2   # 64 left 41 waiting
    assert "CPUs this process may use: use at most" in capsys.readouterr().err
    r = _vaekit(*TINY, env_extra={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert r.returncode == 2 and "pass --run-dir" in r.stderr


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_a_torchrun_restart_goes_on_from_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "1", *TINY]) == 0
    again = _vaekit("--run-dir", str(run), "--epochs", "2", *TINY, env_extra={"TORCHELASTIC_RESTART_COUNT": "1"})
    assert again.returncode == 0, again.stderr
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def _variants():
    return [v for v in every_variant() if v[0] != "vqvae"]   # the VQ-VAE's statistics need the process group


@pytest.mark.parametrize(("name", "loss", "prior", "posterior"), _variants())
@pytest.mark.parametrize("n", [8, 7])
def test_every_variant_s_rows_add_up_to_the_whole_batch(name, loss, prior, posterior, n):
    """Without a process group: two processes' rows of a batch, each with its noise drawn for the whole batch and
    its loss scaled by world / n, give gradients whose average (what DDP computes) is the whole batch's."""
    model, x, y = _model_and_batch(name, prior, posterior)
    x, y = x[:n], y[:n]
    ctx = LossContext(TrainConfig(loss=loss, mc_samples=2 if loss == "iwae" else 1, precision="fp32"), 0.5, 40)
    terms_of = LossTerms(model, get_loss(loss), "fp32")
    torch.manual_seed(1)
    whole = forward_backward(terms_of, x, y, ctx, None)
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    sums = torch.zeros(3)
    for rank in range(2):
        lo, hi = World(rank, 2).rows(n)
        torch.manual_seed(1)   # every process holds the same RNG state
        with batch_shard(lo, hi, n):
            sums += forward_backward(terms_of, x[lo:hi], y[lo:hi], ctx, 2 / n)
    torch.testing.assert_close(sums, whole, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.parameters(), expected, strict=True):
        # float32 rounding, scaled by the gradient's size (the capacity loss multiplies it by gamma = 1000)
        torch.testing.assert_close(p.grad / 2, g, rtol=1e-4, atol=1e-6 * max(1.0, g.abs().max().item()))


def _processes_of(run) -> dict[int, str]:
    """pid -> command line of the processes whose command line names `run`."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(run) in cmdline:
                found[int(entry)] = cmdline
    return found


def _start_long_run(run):
    proc = subprocess.Popen([sys.executable, "-m", "vaekit", "train", "--nproc", "2", "--run-dir", str(run), *TINY,
                             "--epochs", "100000"], env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not read_metrics(run):   # an epoch done: training
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    return proc


def _gone_within(run, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _processes_of(run):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("killed", ["launcher", "command"])
def test_no_training_process_outlives_a_killed_launcher(tmp_path, killed):
    """SIGKILL to `vaekit train --nproc 2` or to its launcher used to leave the training processes waiting for it
    (with --nproc 64, 41 of them for 9 minutes); now each gets SIGTERM from the kernel when its parent dies."""
    run = tmp_path / "run"
    proc = _start_long_run(run)
    launcher = [pid for pid, cmd in _processes_of(run).items() if "vaekit.training.launch" in cmd]
    assert len(launcher) == 1
    try:
        os.kill(launcher[0] if killed == "launcher" else proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert _gone_within(run, 30), _processes_of(run)
    finally:
        for pid in _processes_of(run):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_the_death_of_one_process_is_one_line_from_the_other(tmp_path):
    """A training process killed: the other's collective fails in gloo, which was a 33-41-line traceback."""
    run = tmp_path / "run"
    proc = _start_long_run(run)
    workers = sorted(pid for pid, cmd in _processes_of(run).items() if "-m vaekit train" in cmd and "--nproc" not in cmd)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "another training process stopped" in lines[0] and "--resume" in lines[0], err
    assert main(["train", "--resume", str(run), "--epochs", str(len(read_metrics(run)) + 1), "--no-progress",
                 "--no-report"]) == 0
