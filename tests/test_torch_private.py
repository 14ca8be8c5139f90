"""The private torch APIs (vaekit.torch_private): each missing one falls back to a public path that computes the
same, with one note on stderr per process."""

import pytest
import torch

from vaekit import torch_private
from vaekit.accel.adam import FusedAdam, make_adam


@pytest.fixture
def fresh_notes(monkeypatch):
    monkeypatch.setattr(torch_private, "_noted", set())


def test_the_foreach_fallbacks_compute_what_the_kernels_do(monkeypatch, capsys, fresh_notes):
    tensors = [torch.randn(5), torch.randn(3, 2)]
    norms = torch.stack(torch_private.foreach_norm(tensors))
    added, subtracted = [t.clone() for t in tensors], [t.clone() for t in tensors]
    torch_private.foreach_add_(added, 1)
    for name in ("_foreach_norm", "_foreach_add_", "_foreach_sub_"):
        monkeypatch.delattr(torch, name)
    torch.testing.assert_close(torch.stack(torch_private.foreach_norm(tensors)), norms)
    torch.testing.assert_close(torch.stack(torch_private.foreach_norm(tensors)),
                               torch.stack([torch.linalg.vector_norm(t) for t in tensors]))
    fallback = [t.clone() for t in tensors]
    torch_private.foreach_add_(fallback, 1)
    for a, b in zip(fallback, added, strict=True):
        assert torch.equal(a, b)
    torch_private.foreach_sub_(subtracted, [torch.tensor(1.0)] * 2)
    for a, b in zip(subtracted, tensors, strict=True):
        assert torch.equal(a, b - 1)
    notes = capsys.readouterr().err.splitlines()
    assert len([n for n in notes if "torch._foreach_norm" in n]) == 1   # once per process, not per call
    assert all(n.startswith("note: this torch") and torch_private.CHECKED_WITH in n for n in notes)


def test_without_the_fused_kernel_adam_is_torch_optims(monkeypatch, capsys, fresh_notes):
    params = [torch.nn.Parameter(torch.randn(3))]
    assert isinstance(make_adam(params, 1e-3, 1e-8), FusedAdam)
    monkeypatch.delattr(torch, "_fused_adam_")
    assert isinstance(make_adam(params, 1e-3, 1e-8), torch.optim.Adam)
    assert "torch.optim.Adam" in capsys.readouterr().err


def test_without_the_fake_tensor_check_every_tensor_is_real(monkeypatch, fresh_notes):
    assert torch_private.is_fake(torch.zeros(1)) is False
    monkeypatch.setattr(torch_private, "_find", lambda module, name: None)
    assert torch_private.is_fake(torch.zeros(1)) is False
    assert torch_private.custom_graph_pass() is None
    assert torch_private.functional_all_reduce() is None
    assert torch_private.aoti_compile_and_package() is None
