"""ONNX export of a run: its encoder and decoder as two .onnx files with a dynamic batch dimension, checked with
onnxruntime right after export, and a JSON file that says what every input and output is.

    encoder.onnx   x (batch, C, H, W) [, y (batch,) int64 labels] -> the posterior's parameters (each distribution
                   names them: `exported`), e.g. mu, logvar; a VQ-VAE's code indices and the decoder's input
    decoder.onnx   z (batch, what the prior draws) [, y] -> the likelihood's parameters (e.g. logits) and `mean`,
                   the mean image of p(x|z)
    vaekit-onnx.json  shapes, dtypes and meaning of each, the latent size, and the prior (N(0, I), or a mixture's
                   weights, means and log-variances) so a program in another language can sample

Exported by torch.onnx (the torch.export-based exporter), in float32 and in eval mode. Needs the `export` extra:
pip install 'vaekit[export]'.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, VaekitError
from ..files import atomic_write_text, new_folder
from ..store.checkpoint import load_model

TOLERANCE = 1e-4   # onnxruntime against PyTorch, largest absolute difference allowed

MEANINGS = {
    "x": "the input: images in [0, 1] (C, H, W), or a table's standardised rows",
    "y": "class labels, int64, 0..num_classes-1 (conditional models)",
    "z": "the latent code the decoder reads",
    "mu": "mean of q(z|x) (diagonal Gaussian; with stochastic layers, of the first one)",
    "logvar": "log-variance of q(z|x), log sigma^2",
    "context": "the context h the IAF steps read (sampling q(z|x) needs the flow: use vaekit)",
    "mode": "the code figures use for x: the posterior's mode (a flow: the flow of mu; layers: the chain of means; "
            "a VQ-VAE: its codes, the decoder's input)",
    "indices": "the index of each code in the codebook (int64)",
    "logits": "Bernoulli logits of each pixel: p(pixel = 1) = sigmoid(logits)",
    "loc": "location of each pixel's discretised logistic",
    "log_scale": "log-scale of each pixel's discretised logistic",
    "mean": "the mean of p(x|z): the decoded image (clamped to [0, 1] for images)",
}


def _needs_onnx():
    try:
        import onnx  # noqa: F401, PLC0415
        import onnxruntime  # noqa: PLC0415
    except ImportError:
        raise ConfigError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'vaekit[export]'") from None
    return onnxruntime


class _Network(nn.Module):
    """The encoder (x [, y] -> q's exported parameters) or the decoder (z [, y] -> p's and the mean image) as a
    module of tensors in and out, what torch.onnx exports."""

    def __init__(self, model, part: str):
        super().__init__()
        self.model, self.part = model, part

    def distribution(self, v, y=None):
        bound = self.model.given(y)
        return bound.encode(v) if self.part == "encoder" else bound.decode(v)

    def output_names(self, inputs: tuple) -> list[str]:
        with torch.no_grad():
            names = list(type(self.distribution(*inputs)).exported)
        return names if self.part == "encoder" else [*names, "mean"]

    def forward(self, v, y=None):
        d = self.distribution(v, y)
        out = tuple(getattr(d, name) for name in type(d).exported)
        if self.part == "encoder":
            return out
        support = self.model.likelihood.support
        return (*out, d.mean if support is None else d.mean.clamp(*support))


def _example_inputs(model, n: int) -> tuple[tuple, tuple]:
    """(encoder inputs, decoder inputs) for a batch of n."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *model.config.input_shape, generator=g)
    y = (torch.arange(n) % model.config.num_classes,) if model.conditional else ()
    with torch.no_grad():
        z = model.given(y[0] if y else None).encode(x).mode.float()   # codes the decoder reads, of their true size
    return (x, *y), (z, *y)


def _export(module: nn.Module, inputs: tuple, input_names: list[str], output_names: list[str], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in inputs)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(module, inputs, dynamo=True, dynamic_shapes=dynamic, input_names=input_names,
                                        output_names=output_names, verbose=False)
    except Exception as e:   # an operation the exporter cannot express: say which network, one line
        raise VaekitError(f"torch.onnx could not export the {path.stem} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from e
    program.save(str(path))


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx's notes to its own developers kept off the user's terminal: a log line per torchvision op it skips
    (vaekit uses none; 4 per network) and FutureWarnings about torch's internal tree specs (torch 2.13). A failed
    export still raises, and is reported in one line."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.onnx._internal.exporter._registration")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _check(ort, module, inputs, names, path: Path) -> tuple[float, tuple]:
    """Run the exported file and PyTorch on the same inputs: the largest absolute difference, and PyTorch's outputs."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = module(*inputs)
    worst = 0.0
    for name, a, b in zip(names, got, want, strict=True):
        b = b.float().numpy() if b.is_floating_point() else b.numpy()
        if a.shape != b.shape:
            raise VaekitError(f"the exported {path.stem}'s {name} has shape {a.shape}, PyTorch's {b.shape}")
        worst = max(worst, float(abs(a.astype("float64") - b.astype("float64")).max()) if a.size else 0.0)
    return worst, want


def _tensor_info(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": ["batch", *t.shape[1:]], "dtype": str(t.dtype).replace("torch.", ""),
            "meaning": MEANINGS.get(name, "")}


def export_onnx(run: str | Path, out: str | Path, checkpoint: str = "last", log=print) -> Path:
    """Export RUN's encoder and decoder to OUT/encoder.onnx and OUT/decoder.onnx with OUT/vaekit-onnx.json; each is
    checked with onnxruntime on a batch of another size (refused beyond 1e-4). Returns OUT."""
    ort = _needs_onnx()
    model, config, epoch = load_model(Path(run), "cpu", checkpoint)
    model.eval().float()
    (x_in, z_in), (x_check, z_check) = _example_inputs(model, 2), _example_inputs(model, 3)
    extra = ["y"] if model.conditional else []
    parts = {"encoder": (x_in, x_check, ["x", *extra]), "decoder": (z_in, z_check, ["z", *extra])}
    # the run's name, not its path: the side file says nothing about this machine
    description = {"run": Path(run).resolve().name, "epoch": epoch, "model": config.model.model,
                   "likelihood": config.model.likelihood, "input_shape": list(config.model.input_shape),
                   "latent_dim": config.model.latent_dim, "num_classes": config.model.num_classes,
                   "prior": prior_description(model), "tolerance": TOLERANCE}
    with new_folder(out, "export") as tmp:
        for part, (inputs, check_inputs, input_names) in parts.items():
            module = _Network(model, part).eval()
            names = module.output_names(inputs)
            path = tmp / f"{part}.onnx"
            _export(module, inputs, input_names, names, path)
            worst, outputs = _check(ort, module, check_inputs, names, path)
            if worst > TOLERANCE:
                raise VaekitError(f"the exported {part} differs from PyTorch by {worst:.2g} (more than {TOLERANCE:g}); "
                                  "nothing was written")
            description[part] = {"file": path.name, "max_abs_difference": worst,
                                 "inputs": [_tensor_info(n, t) for n, t in zip(input_names, check_inputs, strict=True)],
                                 "outputs": [_tensor_info(n, t) for n, t in zip(names, outputs, strict=True)]}
            log(f"{part}: {path.name}, onnxruntime matches PyTorch within {worst:.1g}")
        atomic_write_text(tmp / "vaekit-onnx.json", json.dumps(description, indent=2) + "\n")
    return Path(out)


def prior_description(model) -> dict:
    """p(z) as numbers a program without vaekit can sample: the prior's own description, else its name."""
    prior = model.prior()
    describe = getattr(prior, "description_for_export", None)
    if describe is not None:
        return describe()
    return {"kind": "other", "name": prior.name, "note": "no closed form to export; draw z with vaekit "
            "(vaekit sample) or encode images"}
