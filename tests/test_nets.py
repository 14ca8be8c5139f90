"""Every registered architecture x image shapes (odd sizes included): encoder/decoder sizes, a training step, generation."""

import math

import pytest
import torch

from conftest import synthetic_splits
from vaekit import LOSSES, ModelConfig, RunConfig, TrainConfig, build_model
from vaekit.errors import ConfigError
from vaekit.models.nets import ARCHITECTURES, conv_sizes
from vaekit.models.objectives import LossContext

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 5, 7)]
# residual blocks belong to conv; every other architecture runs without them
VARIANTS = [(arch, residual) for arch in ARCHITECTURES for residual in ((False, True) if arch == "conv" else (False,))]


def config(arch, shape, residual=False, latent_dim=3, **kw):
    return ModelConfig(input_shape=shape, latent_dim=latent_dim, hidden_dims=(4, 8), arch=arch, residual=residual, **kw)


@pytest.mark.parametrize("arch,residual", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bodies_have_the_sizes_the_model_needs(arch, residual, shape, one_thread):
    cfg = config(arch, shape, residual)
    encoder, decoder = ARCHITECTURES[arch](cfg, 2 * cfg.latent_dim, 1)
    assert encoder(torch.rand(5, *shape)).shape == (5, 2 * cfg.latent_dim)
    z = torch.randn(4, 5, cfg.latent_dim)  # (k, B, D): Monte Carlo samples lead
    out = decoder(z)
    assert out.shape == (4, 5, math.prod(shape))
    assert decoder(z[0]).shape == (5, math.prod(shape))
    # the sample dimension is only carried along: decoding one sample alone gives the same numbers
    torch.testing.assert_close(decoder(z[2]), out[2], atol=1e-5, rtol=1e-5)
    assert ARCHITECTURES[arch](cfg, 1, 2)[1](z).shape == (4, 5, 2 * math.prod(shape))  # params_per_feature sizes the output


@pytest.mark.parametrize("arch,residual", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_vae_elbo_step_and_generate(arch, residual, shape, one_thread):
    model = build_model(config(arch, shape, residual))
    x = synthetic_splits(shape, n=24).train.x[:6]
    terms = LOSSES["elbo"](model, x, LossContext(TrainConfig(mc_samples=2)))
    assert all(torch.isfinite(v).all() and v.shape == (6,) for v in terms.values())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    terms["loss"].mean().backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)
    samples = model.generate(3)
    assert samples.shape == (3, *shape) and samples.min() >= 0 and samples.max() <= 1


def test_conv_downsamples_while_the_map_allows_and_uses_the_config():
    assert conv_sizes((28, 28), 3) == [(28, 28), (14, 14), (7, 7), (3, 3)]
    assert conv_sizes((5, 7), 3) == [(5, 7), (2, 3), (1, 1), (1, 1)]
    model = build_model(config("conv", (3, 32, 32), activation="tanh"))
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8] and convs[0].in_channels == 3 and convs[0].stride == (2, 2)
    assert any(isinstance(m, torch.nn.Tanh) for m in model.decoder.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())


def test_residual_blocks_add_parameters_only_when_asked():
    plain, res = (sum(p.numel() for p in build_model(config("conv", (1, 8, 8), r)).parameters()) for r in (False, True))
    assert res > plain


def test_arch_is_checked_and_old_configs_still_load():
    with pytest.raises(ConfigError, match=r"arch 'transformer' is unknown \(ModelConfig.arch, --arch\)"):
        build_model(ModelConfig(arch="transformer"))
    with pytest.raises(ConfigError, match="residual"):
        build_model(config("mlp", (1, 8, 8), residual=True))
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        build_model(ModelConfig(input_shape=(9,), arch="conv", hidden_dims=(4,)))
    old = RunConfig().to_dict()
    del old["model"]["arch"], old["model"]["residual"]
    assert RunConfig.from_dict(old).model.arch == "mlp"
    conv = RunConfig(model=config("conv", (3, 5, 7), residual=True))
    assert RunConfig.from_dict(conv.to_dict()) == conv


def test_mlp_weights_keep_their_names():
    # checkpoints written before ARCHITECTURES still load: same state-dict keys
    keys = set(build_model(config("mlp", (1, 8, 8))).state_dict())
    assert {"encoder.0.weight", "encoder.2.weight", "decoder.0.weight", "decoder.4.bias"} <= keys


def test_cli_trains_evaluates_and_samples_a_conv_vae(tmp_path, capsys):
    from vaekit.cli.main import main

    run = tmp_path / "r"
    assert main(["train", "--run-dir", str(run), "--data", "digits", "--val-size", "100", "--arch", "conv", "--residual",
          "--hidden", "8", "16", "--latent-dim", "2", "--epochs", "1", "--no-progress", "--no-report"]) == 0
    saved = RunConfig.load(run / "config.json").model
    assert saved.arch == "conv" and saved.residual and saved.hidden_dims == (8, 16)
    assert main(["eval", str(run), "--nll-k", "8", "--json"]) == 0  # importance sampling decodes (k, B, D)
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
