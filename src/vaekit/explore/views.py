"""What the explorer's page asks of one saved run, computed in this process: the test set's codes
for the latent plane, decoding z (given a class for a conditional model), the interpolation strip,
samples from the prior, and a VQ-VAE's code grid. Every answer is JSON-ready (images as PNG data URIs).

The arguments arrive from web requests: each is checked here (`RequestError`, a 4xx) before it
reaches the model, so a bad request costs no model call and changes nothing."""

from __future__ import annotations

import base64
import math
import threading

import torch

from ..errors import ConfigError
from ..outputs.images import png_bytes, to_uint8
from ..outputs.plots.decoded import slerp
from ..outputs.plots.run import Run


class RequestError(Exception):
    """A request the explorer cannot answer: its status (4xx) and a one-line reason."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


MAX_BATCH = 256      # codes decoded by one request (a strip, a grid of samples)
MAX_ABS_Z = 1000.0   # |z| beyond this is no place a decoder was trained near (as `vaekit plot --range`)
MAX_STEPS = 64       # images in an interpolation strip
MAX_POINTS = 5000    # test points drawn on the plane (a fixed random subset beyond that)
SCALE = 1            # pixels per image pixel in the PNGs: the page scales them up (image-rendering: pixelated)


def data_uri(images: torch.Tensor) -> list[str]:
    """Images (N, C, H, W) in [0, 1] -> N PNG data URIs."""
    return ["data:image/png;base64," + base64.b64encode(png_bytes(a, SCALE)).decode("ascii") for a in to_uint8(images)]


def whole(value, what: str, lo: int, hi: int) -> int:
    """An integer request field in [lo, hi] (JSON true/false and 3.5 are not integers)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{what} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"{what} {value} is out of range: use {lo} to {hi}")
    return value


def number(value, what: str, lo: float, hi: float) -> float:
    """A finite real request field in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{what} must be a finite number, not {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"{what} {value:g} is out of range: use {lo:g} to {hi:g}")
    return float(value)


# Every model call of every run holds this one lock: torch already spreads one decode over the cores, so
# concurrent requests queue instead of oversubscribing them; and seeded draws (samples, re-drawn codes) seed
# torch's one global generator, which two runs' requests drawing at once would share (their samples then
# changed from one page load to the next).
MODEL_LOCK = threading.Lock()


class RunView:
    """One run as the explorer shows it."""

    def __init__(self, run: Run, max_points: int = MAX_POINTS):
        if len(run.config.model.input_shape) != 3:
            raise ConfigError(f"{run.name} models table rows, not images: the explorer shows decoded images; "
                              "`vaekit sample RUN --out samples.csv` writes decoded rows")
        self.run, self.lock = run, MODEL_LOCK
        self.model = run.model.eval()
        self.n_test = len(run.test)
        self.labels = run.test.y.cpu() if run.test.y is not None else None
        g = torch.Generator().manual_seed(0)
        shown = torch.randperm(self.n_test, generator=g)[:max_points] if self.n_test > max_points else torch.arange(self.n_test)
        self.shown = shown.sort().values                     # the test indices drawn on the plane
        if not run.discrete:
            self.mu = run.mu.cpu()                           # (N, D): posterior means (the AE's codes)
            self.order = run.by_usage()                      # dimensions, most used first
            self.usage = run.usage.cpu()

    # ---- what the page learns once
    def info(self) -> dict:
        run, cfg = self.run, self.run.config.model
        classes = run.data.num_classes if self.labels is not None else 0
        out = {"name": run.name, "model": run.kind, "describe": run.describe(), "discrete": run.discrete,
               "conditional": run.conditional, "image_shape": list(cfg.input_shape), "n_test": self.n_test,
               "num_classes": classes, "class_names": [run.class_name(k) for k in range(classes)],
               "label_name": run.label_name if classes else "", "prior": run.prior_name}
        if run.discrete:
            out.update(code_positions=self.model.code_positions, code_grid=list(self.model.code_grid),
                       codebook_size=cfg.codebook_size)
        else:
            out.update(latent_dim=run.latent_dim, order=self.order, usage=[round(float(u), 4) for u in self.usage],
                       usage_name=run.usage_name, extent=self.extent())
        return out

    def extent(self) -> float:
        """Half the side of the plane's square: the notes' [-5, 5]^2, or wider when the codes lie beyond it
        (an AE's codes need not stay near the origin)."""
        spread = self.mu.abs().quantile(0.995).item() if len(self.mu) else 0.0
        return float(max(5.0, math.ceil(spread * 1.1)))

    # ---- requests
    def _continuous(self, what: str) -> None:
        if self.run.discrete:
            raise RequestError(f"{self.run.name} is a VQ-VAE: its z is discrete codes, so {what} does not apply; "
                               "use /api/codes and /api/redraw")

    def _discrete(self, what: str) -> None:
        if not self.run.discrete:
            raise RequestError(f"{self.run.name} is not a VQ-VAE: {what} applies only to discrete codes")

    def _label(self, label) -> int | None:
        if not self.run.conditional:
            if label is not None:
                raise RequestError(f"{self.run.name} is not conditional: drop the label")
            return None
        if label is None:
            return 0
        return whole(label, "label", 0, self.run.config.model.num_classes - 1)

    def _index(self, index, what: str = "index") -> int:
        if isinstance(index, int) and not isinstance(index, bool) and not 0 <= index < self.n_test:
            raise RequestError(f"no test image {index}: {what} must be 0 to {self.n_test - 1}", 404)
        return whole(index, what, 0, self.n_test - 1)

    def _decode(self, z: torch.Tensor, label: int | None) -> list[str]:
        with self.lock, torch.no_grad():
            x = self.run.given(label).decode(z.to(self.model.device)).mean
            return data_uri(x.float().cpu())

    def points(self, dims) -> dict:
        """The plane's scatter: test points' codes in dimensions [i, j] (a 1-D latent: [0], and y is None),
        their indices and labels."""
        self._continuous("the latent plane")
        wanted = min(2, self.run.latent_dim)
        if not isinstance(dims, list) or len(dims) != wanted:
            raise RequestError(f"dims must be {'two latent indices [i, j]' if wanted == 2 else '[0] for a 1-D latent'}, "
                               f"not {dims!r}")
        dims = [whole(d, "dims", 0, self.run.latent_dim - 1) for d in dims]
        if len(set(dims)) != len(dims):
            raise RequestError(f"dims {dims}: choose two different dimensions")
        codes = self.mu[self.shown]
        x, y = (None if d is None else [round(v, 4) for v in codes[:, d].tolist()] for d in (dims + [None])[:2])
        return {"index": self.shown.tolist(), "x": x, "y": y,
                "label": self.labels[self.shown].tolist() if self.labels is not None else None}

    def decode(self, z, label=None) -> dict:
        """Decode a batch of codes: z is a list of 1..MAX_BATCH lists of latent_dim numbers."""
        self._continuous("decoding z")
        d = self.run.latent_dim
        if not isinstance(z, list) or not 1 <= len(z) <= MAX_BATCH:
            raise RequestError(f"z must be a list of 1 to {MAX_BATCH} codes, each a list of {d} numbers")
        for row in z:
            if not isinstance(row, list) or len(row) != d:
                raise RequestError(f"each code must be a list of {d} numbers (latent_dim of {self.run.name}), "
                                   f"not {len(row) if isinstance(row, list) else type(row).__name__}")
            for v in row:
                number(v, "z", -MAX_ABS_Z, MAX_ABS_Z)
        return {"images": self._decode(torch.tensor(z, dtype=torch.float32), self._label(label))}

    def test_image(self, index, label=None) -> dict:
        """Test image `index`: the image, its label, its code (z's posterior mean, or a VQ-VAE's code
        indices) and its reconstruction (given `label` for a conditional model's decoder)."""
        i = self._index(index)
        x = self.run.test.take(torch.tensor([i])).to(self.model.device)
        out = {"index": i, "image": data_uri(x.float().cpu())[0],
               "label": int(self.labels[i]) if self.labels is not None else None}
        if self.run.discrete:
            with self.lock, torch.no_grad():
                codes = self.model.encode(x).indices[0]
            out.update(codes=codes.tolist(), reconstruction=self.decode_codes([codes.tolist()])["images"][0])
        else:
            out.update(z=[round(v, 5) for v in self.mu[i].tolist()])
            out["reconstruction"] = self._decode(self.mu[i:i + 1], self._label(label))[0]
        return out

    def interpolate(self, a, b, steps=10, label=None) -> dict:
        """The strip between test images a and b's codes: the straight line and the great circle."""
        self._continuous("interpolation")
        ia, ib = self._index(a, "a"), self._index(b, "b")
        t = torch.linspace(0, 1, whole(steps, "steps", 2, MAX_STEPS))
        za, zb = self.mu[ia], self.mu[ib]
        label = self._label(label)
        line = self._decode(torch.lerp(za, zb, t[:, None]), label)
        circle = self._decode(slerp(za, zb, t), label) if self.run.latent_dim > 1 else None
        return {"a": ia, "b": ib, "line": line, "circle": circle}

    def samples(self, n=16, temperature=1.0, seed=0, label=None) -> dict:
        """n decoded draws from the prior (a VQ-VAE: from its code prior), z's spread scaled by temperature."""
        n = whole(n, "n", 1, MAX_BATCH)
        temperature = number(temperature, "temperature", 0.01, 10.0)
        seed = whole(seed, "seed", 0, 2**31 - 1)
        label = self._label(label)
        with self.lock, self.run.seeded(seed):
            x = self.run.given(label).generate(n, temperature)
        return {"images": data_uri(x.float().cpu())}

    def _codes(self, codes) -> torch.Tensor:
        m, k = self.model.code_positions, self.run.config.model.codebook_size
        if not isinstance(codes, list) or not 1 <= len(codes) <= MAX_BATCH:
            raise RequestError(f"codes must be a list of 1 to {MAX_BATCH} code grids, each {m} indices")
        for row in codes:
            if not isinstance(row, list) or len(row) != m:
                raise RequestError(f"each code grid must be a list of {m} indices (code positions of {self.run.name})")
            for v in row:
                whole(v, "code index", 0, k - 1)
        return torch.tensor(codes, dtype=torch.long, device=self.model.device)

    def decode_codes(self, codes) -> dict:
        """Decode VQ-VAE code grids (lists of code_positions indices into the codebook)."""
        self._discrete("decoding codes")
        indices = self._codes(codes)
        with self.lock, torch.no_grad():
            x = self.model.decode(self.model.quantiser.lookup(indices).flatten(-2)).mean
        return {"images": data_uri(x.float().cpu())}

    def redraw(self, codes, position, temperature=1.0, seed=0) -> dict:
        """Draw a new code at one position of a code grid from the code prior given the codes before it
        (another index than the current one), and decode the result."""
        self._discrete("redrawing a code")
        indices = self._codes([codes])
        m = whole(position, "position", 0, self.model.code_positions - 1)
        temperature = number(temperature, "temperature", 0.01, 10.0)
        seed = whole(seed, "seed", 0, 2**31 - 1)
        with self.lock, torch.no_grad(), self.run.seeded(seed):
            probs = (self.model.code_prior.logits(indices)[0, m].float() / temperature).softmax(-1)
            current = int(indices[0, m])
            if probs.sum() - probs[current] > 1e-12:
                probs[current] = 0.0      # a re-draw changes the code
            indices[0, m] = torch.multinomial(probs, 1).item()
        new = indices[0].tolist()
        return {"codes": new, "position": m, "image": self.decode_codes([new])["images"][0]}
