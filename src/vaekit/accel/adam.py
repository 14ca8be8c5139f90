"""Adam (Kingma & Ba 2015) for the training loop: the ATen kernel that torch.optim.Adam(fused=True) runs, with its
state and its state_dict format, so checkpoints of either load into the other.

Why not torch.optim.Adam itself: in torch 2.13 every torch.optim optimizer imports torch._dynamo when it is built
and at every step (about 1 s; measured on this project's 2-core AMD EPYC, `vaekit train --epochs 0` spent 0.67 s
of its 2.0 s waiting for that import), so a short run paid for a compiler it does not use. This class calls
torch._fused_adam_ directly: the same numbers bit for bit (tests/test_adam.py) with no import. Where a torch
build lacks that kernel, make_adam falls back to torch.optim.Adam.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..torch_private import foreach_add_, foreach_sub_, fused_adam

DEFAULTS = {"betas": (0.9, 0.999), "weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": None,
            "capturable": False, "differentiable": False, "fused": True, "decoupled_weight_decay": False}


class FusedAdam:
    """Adam over one parameter group; parameters without a gradient are skipped (no state, no step), as in torch."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, eps: float = 1e-8):
        self.params = list(params)
        self.param_groups = [{"lr": lr, "eps": eps, **DEFAULTS, "params": self.params}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_of(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """p's step count and moments, zeros (torch's initial state) before its first step."""
        s = self.state.get(p)
        if s is None:
            s = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                 "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return s

    @torch.no_grad()
    def step(self, found_inf: torch.Tensor | None = None) -> None:
        """One step; with found_inf (a 0-d float tensor on the parameters' device), none where it is 1.0: the moments
        and step counts stay as they were, decided on the device without reading it (as torch's GradScaler does)."""
        group = self.param_groups[0]
        groups: dict[tuple, list[list[torch.Tensor]]] = {}   # by device and dtype, as the kernel wants them
        for p in self.params:
            if p.grad is None:
                continue
            s = self.state_of(p)
            lists = groups.setdefault((p.device, p.dtype), [[], [], [], [], []])
            for i, t in enumerate((p, p.grad, s["exp_avg"], s["exp_avg_sq"], s["step"])):
                lists[i].append(t)
        beta1, beta2 = group["betas"]
        for params, grads, exp_avgs, exp_avg_sqs, steps in groups.values():
            foreach_add_(steps, 1)
            fused_adam()(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                               weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False, maximize=False,
                               found_inf=found_inf)
            if found_inf is not None:   # a skipped step does not count
                foreach_sub_(steps, [found_inf] * len(steps))

    def state_dict(self) -> dict:
        """torch.optim's format: state by parameter index, the group with its parameters as indices."""
        index = {p: i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[p]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("the saved optimizer state is for a different set of parameters")
        state = {}
        for i, p in zip(groups[0]["params"], self.params, strict=True):
            saved = state_dict["state"].get(i, state_dict["state"].get(str(i)))
            if saved is None:
                continue
            if saved["exp_avg"].shape != p.shape or saved["exp_avg_sq"].shape != p.shape:
                raise ValueError(f"the saved optimizer state has shape {tuple(saved['exp_avg'].shape)} for a parameter "
                                 f"of shape {tuple(p.shape)}")
            state[p] = {"step": torch.as_tensor(saved["step"], dtype=torch.float32).to(p.device).clone(),
                        "exp_avg": saved["exp_avg"].to(p.device, p.dtype).clone(),
                        "exp_avg_sq": saved["exp_avg_sq"].to(p.device, p.dtype).clone()}
        lr, eps = groups[0]["lr"], groups[0]["eps"]
        self.param_groups[0].update(lr=lr, eps=eps, betas=tuple(groups[0].get("betas", DEFAULTS["betas"])))
        self.state = state


def step_factors(steps: list[torch.Tensor], lr: float, betas: tuple[float, float]) -> torch.Tensor:
    """For the update of each parameter's next step (its count t + 1): the step size lr / (1 - beta1^t) and
    sqrt(1 - beta2^t), (P, 2) float32, computed in float64 as the fused kernel does, by tensor operations on the
    counts' device (no host synchronisation). Outside the compiled graph: Inductor inlines 0-d arithmetic into every
    element's loop (two pow() per weight, which made a step of mnist-fast's network 1.6x slower here)."""
    t = torch.stack(steps).double() + 1
    return torch.stack([lr / (1 - betas[0] ** t), (1 - betas[1] ** t).sqrt()], 1).float()


@torch.no_grad()
def adam_update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], factors: torch.Tensor, take: torch.Tensor,
                betas: tuple[float, float], eps: float) -> None:
    """Adam's update in place as plain tensor operations, for the compiled step (step.whole_step), where Inductor
    fuses it with the gradients' last kernels: the arithmetic of torch's fused kernel (Kingma & Ba 2015, Algorithm 1,
    the bias corrections folded into the step size and the denominator: `factors`, from step_factors), equal to it
    within rounding. Where `take` (a 0-d bool tensor) is False nothing moves, the step counts included: the guard's
    skipped step."""
    beta1, beta2 = betas
    for i, (p, g, m, v, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True)):
        m_new = m.lerp(g, 1 - beta1)
        v_new = v * beta2 + g * g * (1 - beta2)
        p_new = p - factors[i, 0] * m_new / (v_new.sqrt() / factors[i, 1] + eps)
        for old, new in ((p, p_new), (m, m_new), (v, v_new)):
            old.copy_(torch.where(take, new, old))
        step.add_(take.to(step.dtype))


def make_adam(params: Iterable[torch.Tensor], lr: float, eps: float):
    """FusedAdam where this torch has the fused kernel, else torch.optim.Adam (which computes the same)."""
    if fused_adam() is not None:
        return FusedAdam(params, lr, eps)
    return torch.optim.Adam(params, lr=lr, eps=eps)
