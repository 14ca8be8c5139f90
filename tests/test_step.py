"""The training step: every registered model and loss goes through the same forward_backward, compiled or
eager, with the same numbers; a failed compile falls back; the last, smaller batch runs eagerly; and a
compiled run resumes bit-exactly."""

import copy
import dataclasses

import pytest
import torch

from conftest import synthetic_splits
from vaekit import MODELS, POSTERIORS, PRIORS, ModelConfig, RunConfig, TrainConfig, fit
from vaekit.accel import compiled as compiled_module
from vaekit.accel.adam import FusedAdam
from vaekit.accel.compiled import COMPILE_MIN_STEPS, should_compile
from vaekit.cli.main import main
from vaekit.errors import ConfigError
from vaekit.models.family import build_model
from vaekit.models.objectives import LOSSES, LossContext, get_loss
from vaekit.store.checkpoint import load_model
from vaekit.training import fit as train_module
from vaekit.training import step as step_module
from vaekit.training.step import Step

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 6, 6)


def _variants():
    """Every model with every loss it can train with (a loss it cannot take is refused, not tried), with N(0, I) and
    the Gaussian posterior; and the VAE's ELBO and IWAE with every other prior and posterior."""
    out = []
    for name, cls in MODELS.items():
        for loss in LOSSES:
            if loss == cls.default_loss or (cls.stochastic and not cls.discrete and loss in ("elbo", "iwae", "capacity")):
                out.append((name, loss, "standard", "gaussian"))
    return out + [("vae", loss, prior, posterior) for loss in ("elbo", "iwae") for prior in PRIORS for posterior in POSTERIORS
                  if (prior, posterior) != ("standard", "gaussian")]


def _model_and_batch(name: str, prior: str = "standard", posterior: str = "gaussian"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(model=name, latent_dim=2, hidden_dims=(8,), input_shape=SHAPE, num_classes=3,
                                    prior=prior, posterior=posterior))
    data = synthetic_splits(SHAPE, n=48)
    return model, data.train.x[:8], data.train.y[:8]


def _grads_after(model, run) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(1)    # the same noise for both runs
    sums = run()
    return sums, [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize(("name", "loss", "prior", "posterior"), _variants())
def test_every_variant_gives_the_same_numbers_compiled(monkeypatch, name, loss, prior, posterior):
    monkeypatch.setattr(compiled_module, "BACKEND", "aot_eager")   # the graphs torch.compile captures, without codegen
    tcfg = TrainConfig(loss=loss, mc_samples=2 if loss == "iwae" else 1, precision="fp32")
    ctx = LossContext(tcfg, 0.5, 40)
    model, x, y = _model_and_batch(name, prior, posterior)
    eager = Step(model, get_loss(loss), "fp32", batch_sizes=(8,), compiled=False)
    compiled = Step(model, get_loss(loss), "fp32", batch_sizes=(8,), compiled=True, log=pytest.fail)   # no fallback
    sums_e, grads_e = _grads_after(model, lambda: eager(x, y, ctx))
    sums_c, grads_c = _grads_after(model, lambda: compiled(x, y, ctx))
    assert compiled.compiled and sums_e.shape == (3,)
    torch.testing.assert_close(sums_c, sums_e, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_c, grads_e, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _one_graph_and_split(model, loss: str, tcfg: TrainConfig, log=pytest.fail):
    """The same model twice, each with its FusedAdam: one step object that runs forward, backward and Adam as one
    graph, and the split eager step (then FusedAdam.step)."""
    twin = copy.deepcopy(model)
    opt_one, opt_split = FusedAdam(model.parameters(), lr=1e-2), FusedAdam(twin.parameters(), lr=1e-2)
    one = Step(model, get_loss(loss), tcfg.precision, batch_sizes=(8,), compiled=True, log=log, optimizer=opt_one)
    split = Step(twin, get_loss(loss), tcfg.precision, batch_sizes=(8,), compiled=False)
    return (one, opt_one), (split, opt_split, twin)


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize(("name", "loss", "prior", "posterior"), _variants())
def test_every_variant_takes_the_same_step_in_one_graph(monkeypatch, name, loss, prior, posterior):
    """Forward, backward and Adam's update as one graph (torch.func's gradients; aot_eager: the captured graphs,
    no code generation) against the split eager step and FusedAdam: the same loss terms, weights and moments."""
    monkeypatch.setattr(compiled_module, "BACKEND", "aot_eager")
    tcfg = TrainConfig(loss=loss, mc_samples=2 if loss == "iwae" else 1, precision="fp32")
    model, x, y = _model_and_batch(name, prior, posterior)
    notes = []
    (one, opt_one), (split, opt_split, twin) = _one_graph_and_split(model, loss, tcfg, log=notes.append)
    if MODELS[name].no_one_graph:   # the split step, with a note that says why
        assert one.update(x, y, LossContext(tcfg, 0.5, 40)) is None and not one.one_graph
        assert len(notes) == 1 and "one-graph step" in notes[0]
        return
    assert one.one_graph
    for epoch in (0.25, 0.5, 0.75):   # three steps: Adam's moments and bias corrections move
        ctx = LossContext(tcfg, epoch, 40)
        torch.manual_seed(1)   # the same noise for both
        values = one.update(x, y, ctx)
        torch.manual_seed(1)
        opt_split.zero_grad()
        sums = split(x, y, ctx)
        opt_split.step()
        assert not notes and values.shape == (4,) and values[3] == 1.0
        torch.testing.assert_close(values[:3], sums, rtol=1e-5, atol=1e-5)
    for (key, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=key)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        if q in opt_split.state:   # a parameter the loss never reaches has state only in the one-graph step: zeros
            torch.testing.assert_close(opt_one.state[p]["exp_avg"], opt_split.state[q]["exp_avg"], rtol=1e-4, atol=1e-6)
            assert float(opt_one.state[p]["step"]) == float(opt_split.state[q]["step"]) == 3
        else:
            assert not opt_one.state[p]["exp_avg"].any()


@pytest.mark.slow
@pytest.mark.compile
def test_a_non_finite_step_in_one_graph_moves_nothing(monkeypatch):
    """The guard's skipped step inside the graph: a NaN in the batch gives NaN loss terms and gradients; the flag is 0
    and no weight, moment or step count changes."""
    monkeypatch.setattr(compiled_module, "BACKEND", "aot_eager")
    tcfg = TrainConfig(precision="fp32")
    model, x, _ = _model_and_batch("vae")
    (one, opt), _ = _one_graph_and_split(model, "elbo", tcfg)
    one.update(x, None, LossContext(tcfg, 0.5, 40))   # one good step: state to compare against
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    values = one.update(bad, None, LossContext(tcfg, 0.6, 40))
    assert values[3] == 0.0 and not torch.isfinite(values[:3]).all()
    for a, b in zip(model.state_dict().values(), before[0].values(), strict=True):
        assert torch.equal(a, b)
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            assert torch.equal(v, before[1]["state"][i][k]), k


def test_a_one_graph_step_that_fails_to_compile_falls_back_to_the_split_step(monkeypatch):
    real = compiled_module._compile

    def one_graph_broken(fn, fullgraph=False):
        if fn is step_module.whole_step:
            def run(*args):
                raise RuntimeError("torch.func cannot trace this\nmore detail")
            return run
        return real(fn, fullgraph)
    monkeypatch.setattr(compiled_module, "_compile", one_graph_broken)
    monkeypatch.setattr(compiled_module, "BACKEND", "aot_eager")
    model, x, _ = _model_and_batch("vae")
    notes = []
    (one, _), _ = _one_graph_and_split(model, "elbo", TrainConfig(precision="fp32"), log=notes.append)
    ctx = LossContext(TrainConfig(precision="fp32"), 1.0, 40)
    assert one.update(x, None, ctx) is None and one.update(x, None, ctx) is None   # tried once, then not again
    assert not one.one_graph and one.compiled and len(notes) == 1
    assert "one-graph step" in notes[0] and "RuntimeError: torch.func cannot trace this" in notes[0]
    sums, _ = _grads_after(model, lambda: one(x, None, ctx))   # the split step, compiled, still works
    assert sums.shape == (3,)


def test_the_step_sums_the_loss_terms_and_gives_the_mean_loss_gradient():
    model, x, _ = _model_and_batch("vae")
    tcfg = TrainConfig(precision="fp32")
    ctx = LossContext(tcfg, 1.0, 40)
    step = Step(model, get_loss("elbo"), "fp32", batch_sizes=(8,), compiled=False)
    sums, grads = _grads_after(model, lambda: step(x, None, ctx))
    torch.manual_seed(1)
    terms = get_loss("elbo")(model, x, ctx)   # independently: autograd of the batch mean
    expected = torch.autograd.grad(terms["loss"].mean(), list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(sums, torch.stack([terms[k].sum() for k in ("loss", "recon", "kl")]).detach())
    for a, b in zip(grads, expected, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b)


def test_a_failed_compile_falls_back_to_the_eager_step(monkeypatch):
    def broken(fn):
        def run(*args):
            raise RuntimeError("no C++ compiler\nmore detail")
        return run
    monkeypatch.setattr(compiled_module, "_compile", broken)
    model, x, _ = _model_and_batch("vae")
    ctx = LossContext(TrainConfig(precision="fp32"), 1.0, 40)
    notes = []
    step = Step(model, get_loss("elbo"), "fp32", batch_sizes=(8,), compiled=True, log=notes.append)
    sums_fallback, _ = _grads_after(model, lambda: step(x, None, ctx))
    eager = Step(model, get_loss("elbo"), "fp32", batch_sizes=(8,), compiled=False)
    sums_eager, _ = _grads_after(model, lambda: eager(x, None, ctx))
    assert not step.compiled and len(notes) == 1
    assert "torch.compile failed here (RuntimeError: no C++ compiler)" in notes[0] and "--compile off" in notes[0]
    assert torch.equal(sums_fallback, sums_eager)


@pytest.mark.parametrize(("loss", "schedule"), [("elbo", {"kl_warmup_epochs": 1.0}), ("capacity", {"capacity_epochs": 1.0})])
def test_a_schedule_that_moves_every_step_is_one_graph(monkeypatch, loss, schedule):
    """The KL warm-up and the capacity ramp read the epoch, which changes every step: one compilation serves them
    all (a float epoch was a graph constant: a recompilation per step, then eager after torch's limit of 8)."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    monkeypatch.setattr(compiled_module, "BACKEND", counting_backend)
    torch.compiler.reset()   # graphs other tests compiled for the same function would serve these steps
    model, x, _ = _model_and_batch("vae")
    tcfg = TrainConfig(loss=loss, precision="fp32", **schedule)
    compiled = Step(model, get_loss(loss), "fp32", batch_sizes=(8,), compiled=True, log=pytest.fail)
    eager = Step(model, get_loss(loss), "fp32", batch_sizes=(8,), compiled=False)
    for epoch in (0.1, 0.2, 0.35, 0.5, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0):
        ctx = LossContext(tcfg, epoch, 40)
        sums_c, _ = _grads_after(model, lambda ctx=ctx: compiled(x, None, ctx))
        sums_e, _ = _grads_after(model, lambda ctx=ctx: eager(x, None, ctx))
        torch.testing.assert_close(sums_c, sums_e, rtol=1e-5, atol=1e-5)   # the loss follows the schedule
    assert len(graphs) == 1


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.subprocess
def test_compiling_right_after_the_background_import_waits_for_it(tmp_path):
    """vaekit starts importing torch._dynamo in a thread while data loads; a compile in the main thread during that
    import once raised Python's import _DeadlockError. Fresh interpreters: the compile waits for the import."""
    import subprocess
    import sys

    code = ("import torch; from vaekit.runtime import warm_up_compiler; from vaekit.accel.compiled import _compile; "
            "warm_up_compiler(); f = _compile(lambda a, b, c, d, e: (a * 2).sum()); print(float(f(torch.ones(3), 0, 0, 0, 0)))")
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.strip() == "6.0", done.stderr[-2000:]


def test_a_batch_of_another_size_runs_eagerly(monkeypatch):
    calls = []

    def counting(fn):
        def run(*args):
            calls.append(len(args[1]))
            return fn(*args)
        return run
    monkeypatch.setattr(compiled_module, "_compile", counting)
    model, x, _ = _model_and_batch("vae")
    step = Step(model, get_loss("elbo"), "fp32", batch_sizes=(8,), compiled=True)
    ctx = LossContext(TrainConfig(precision="fp32"), 1.0, 40)
    step(x, None, ctx)
    step(x[:5], None, ctx)
    assert calls == [8]


def test_should_compile():
    assert should_compile("on", 1) and not should_compile("off", 10**9)
    assert should_compile("auto", COMPILE_MIN_STEPS) and not should_compile("auto", COMPILE_MIN_STEPS - 1)
    with pytest.raises(ConfigError, match="compile mode 'sometimes' is unknown"):
        should_compile("sometimes", 1)
    with pytest.raises(ConfigError, match="--compile"):
        TrainConfig(compile="sometimes")


def _config(epochs: int) -> RunConfig:
    return RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,), input_shape=SHAPE),
                     train=TrainConfig(epochs=epochs, batch_size=16, precision="fp32", compile="on", seed=3))


@pytest.mark.slow
@pytest.mark.compile
def test_a_compiled_run_resumes_bit_exactly_and_records_it(tmp_path, monkeypatch):
    """Inductor for real, in the process (test_aot.py has the step compiled ahead of time): the noise comes from the
    eager generator, so resuming repeats the run exactly."""
    monkeypatch.setattr(train_module, "AheadOfTime", lambda *args, **kwargs: None)
    data = synthetic_splits(SHAPE, n=96)
    lines = []
    quiet = dict(data=data, progress=False, log=lines.append)
    whole = fit(_config(2), tmp_path / "whole", **quiet)
    fit(_config(1), tmp_path / "parts", **quiet)
    resumed = fit(_config(2), tmp_path / "parts", resume=True, **quiet)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [r["compiled"] for r in whole.history] == [True, True]
    assert not [line for line in lines if line.startswith("note:")]   # the one-graph step, Adam inside it
    # the compile is timed on its own and left out of the throughput: only the first epoch of each call pays it
    # (it counted inside the first epochs' images/s: 1,363 where the step ran at 90k)
    first, second = whole.history
    assert first["build_seconds"] > 0.5 and "build_seconds" not in second
    assert first["images_per_s"] > 0.1 * second["images_per_s"]   # before: about 0.001 of it
    assert any(line.startswith("compiled the step in") for line in lines)
    model, _, _ = load_model(tmp_path / "whole")
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


def test_compile_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--epochs", "1", "--latent-dim", "2", "--hidden", "8",
                 "--compile", "off", "--run-dir", str(run), "--no-report", "--no-progress"]) == 0
    assert "compiled step" not in capsys.readouterr().out
    assert main(["train", "--data", "digits", "--compile", "maybe", "--run-dir", str(tmp_path / "x")]) == 2
    assert "--compile" in capsys.readouterr().err


def test_compile_may_change_on_resume(tmp_path):
    data = synthetic_splits(SHAPE, n=48)
    cfg = dataclasses.replace(_config(1), train=dataclasses.replace(_config(1).train, compile="off"))
    fit(cfg, tmp_path / "r", data=data, progress=False, log=lambda s: None)
    more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2, compile="auto"))
    result = fit(more, tmp_path / "r", resume=True, data=data, progress=False, log=lambda s: None)
    assert [r["compiled"] for r in result.history] == [False, False]   # auto: a short run stays eager


@pytest.mark.slow
@pytest.mark.compile
def test_a_diverging_one_graph_run_skips_rolls_back_and_never_saves_non_finite_weights(tmp_path, monkeypatch):
    """The guard with Adam inside the graph: a learning rate of 1000 sends the weights to Inf; the graph leaves the
    state alone at each non-finite step, the guard rolls back (new optimiser state tensors, which the next call
    must take) with a lower learning rate, and no checkpoint holds a non-finite number."""
    from vaekit.training.guard import DivergedError, weights_finite
    monkeypatch.setattr(compiled_module, "BACKEND", "aot_eager")
    config = RunConfig(ModelConfig(latent_dim=2, hidden_dims=(8,), input_shape=SHAPE),
                       train=TrainConfig(epochs=4, batch_size=16, lr=1000.0, precision="fp32", compile="on", seed=3))
    lines = []
    try:
        result = fit(config, tmp_path / "run", data=synthetic_splits(SHAPE, n=96), progress=False, log=lines.append)
        assert all(r["compiled"] for r in result.history)
        assert sum(r.get("skipped_steps", 0) for r in result.history) > 0
    except DivergedError:
        pass
    assert not [line for line in lines if line.startswith("note:")]   # it ran as one graph
    assert any("rolled back" in line for line in lines)
    if (tmp_path / "run" / "checkpoint").is_dir():
        model, _, _ = load_model(tmp_path / "run")
        assert weights_finite(model)
