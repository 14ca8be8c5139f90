"""vaekit's FusedAdam against torch.optim.Adam(fused=True): the same weights bit for bit, parameters without a
gradient skipped the same way, and state dicts that load into each other."""

import copy

import pytest
import torch

from vaekit.accel.adam import FusedAdam, adam_update, make_adam, step_factors


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _step(net, opt, x, skip_first_layer=False):
    opt.zero_grad(set_to_none=True)
    net(x).pow(2).sum().backward()
    if skip_first_layer:   # as the alternating schedule does: no gradient, so no update and no state
        for p in net[0].parameters():
            p.grad = None
    opt.step()


@pytest.mark.slow
@pytest.mark.parametrize("eps", [1e-8, 1e-4])
def test_the_same_weights_as_torch_fused_adam(eps):
    ours_net, torch_net = _net(), _net()
    ours = FusedAdam(ours_net.parameters(), lr=3e-2, eps=eps)
    theirs = torch.optim.Adam(torch_net.parameters(), lr=3e-2, eps=eps, fused=True)
    g = torch.Generator().manual_seed(1)
    for i in range(12):
        x = torch.randn(4, 5, generator=g)
        for net, opt in ((ours_net, ours), (torch_net, theirs)):
            for group in opt.param_groups:
                group["lr"] = 3e-2 / (1 + i)   # the learning rate set every step, as training does
            _step(net, opt, x, skip_first_layer=i % 3 == 0)
    for a, b in zip(ours_net.parameters(), torch_net.parameters(), strict=True):
        assert torch.equal(a, b)
    sd_ours, sd_torch = ours.state_dict(), theirs.state_dict()
    assert sd_ours["state"].keys() == sd_torch["state"].keys()
    for i, s in sd_torch["state"].items():
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sd_ours["state"][i][k], s[k])
    assert {k: v for k, v in sd_ours["param_groups"][0].items()} == sd_torch["param_groups"][0]


def test_state_dicts_load_both_ways_and_training_continues_the_same():
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(4, 5, generator=g) for _ in range(6)]
    a_net = _net()
    a = torch.optim.Adam(a_net.parameters(), lr=1e-2, fused=True)
    for x in xs[:3]:
        _step(a_net, a, x)
    b_net = _net()
    b_net.load_state_dict(a_net.state_dict())
    b = FusedAdam(b_net.parameters(), lr=5.0)
    b.load_state_dict(a.state_dict())             # torch's checkpoint into ours
    assert b.param_groups[0]["lr"] == 1e-2
    c_net = _net()
    c_net.load_state_dict(a_net.state_dict())
    c = torch.optim.Adam(c_net.parameters(), lr=5.0, fused=True)
    c.load_state_dict(copy.deepcopy(b.state_dict()))   # and ours into torch's (which keeps the tensors it is given)
    for x in xs[3:]:
        for net, opt in ((a_net, a), (b_net, b), (c_net, c)):
            _step(net, opt, x)
    for p, q, r in zip(a_net.parameters(), b_net.parameters(), c_net.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)


def test_a_state_dict_for_other_parameters_is_refused():
    net = _net()
    opt = FusedAdam(net.parameters(), lr=1e-3)
    _step(net, opt, torch.randn(2, 5))
    other = FusedAdam(torch.nn.Linear(5, 7).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="different set of parameters"):
        other.load_state_dict(opt.state_dict())
    wider = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with pytest.raises(ValueError, match="shape"):
        FusedAdam(wider.parameters(), lr=1e-3).load_state_dict(opt.state_dict())


def test_make_adam_falls_back_to_torch_optim_without_the_fused_kernel(monkeypatch):
    params = list(_net().parameters())
    assert isinstance(make_adam(params, 1e-3, 1e-8), FusedAdam)
    monkeypatch.delattr(torch, "_fused_adam_")
    assert isinstance(make_adam(params, 1e-3, 1e-8), torch.optim.Adam)


@pytest.mark.parametrize("eps", [1e-8, 1e-4])
def test_the_compiled_steps_adam_update_is_torchs_adam(eps):
    """adam_update (the arithmetic the one-graph compiled step runs) against torch.optim.Adam's for-loop
    implementation, an independent one, with the learning rate changed every step; a step it is told not to take
    (the guard's skipped step) moves nothing, the step counts included."""
    ours_net, torch_net = _net(), _net()
    theirs = torch.optim.Adam(torch_net.parameters(), lr=3e-2, eps=eps, foreach=False)
    params = list(ours_net.parameters())
    moments = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    steps = [torch.zeros(()) for _ in params]
    g = torch.Generator().manual_seed(1)
    for i in range(12):
        x = torch.randn(4, 5, generator=g)
        lr = 3e-2 / (1 + i)
        theirs.param_groups[0]["lr"] = lr
        _step(torch_net, theirs, x)
        grads = torch.autograd.grad(ours_net(x).pow(2).sum(), params)
        if i == 5:   # a skipped step first: nothing may change
            before = [t.clone() for t in (*params, *moments[0], *moments[1], *steps)]
            adam_update(params, [gr * float("nan") for gr in grads], *moments, steps,
                        step_factors(steps, lr, (0.9, 0.999)), torch.tensor(False), (0.9, 0.999), eps)
            assert all(torch.equal(a, b) for a, b in zip(before, (*params, *moments[0], *moments[1], *steps), strict=True))
        adam_update(params, grads, *moments, steps, step_factors(steps, lr, (0.9, 0.999)), torch.tensor(True),
                    (0.9, 0.999), eps)
    for a, b in zip(params, torch_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p, m, v, step in zip(torch_net.parameters(), *moments, steps, strict=True):
        state = theirs.state[p]
        torch.testing.assert_close(m, state["exp_avg"])
        torch.testing.assert_close(v, state["exp_avg_sq"])
        assert float(step) == float(state["step"]) == 12


def test_a_step_with_found_inf_moves_nothing_and_does_not_count():
    """found_inf (as torch's GradScaler passes it): 1.0 skips the step on the device, moments and counts included;
    0.0 is an ordinary step, bit for bit."""
    a_net, b_net = _net(), _net()
    a, b = FusedAdam(a_net.parameters(), lr=1e-2), FusedAdam(b_net.parameters(), lr=1e-2)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    for net, opt in ((a_net, a), (b_net, b)):
        _step(net, opt, x)
    before = copy.deepcopy((a_net.state_dict(), a.state_dict()))
    for net in (a_net, b_net):
        for p in net.parameters():
            p.grad = None
        net(x).pow(2).sum().backward()
    a.step(found_inf=torch.tensor(1.0))
    assert all(torch.equal(p, q) for p, q in zip(a_net.state_dict().values(), before[0].values(), strict=True))
    for i, state in a.state_dict()["state"].items():
        assert all(torch.equal(state[k], before[1]["state"][i][k]) for k in state)
    a.step(found_inf=torch.tensor(0.0))
    b.step()
    assert all(torch.equal(p, q) for p, q in zip(a_net.parameters(), b_net.parameters(), strict=True))
    assert all(float(s["step"]) == 2 for s in a.state.values())
