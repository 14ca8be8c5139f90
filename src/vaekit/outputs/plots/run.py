"""What a figure needs from a saved run: the model, the test set and its posterior codes, the
metrics, each loaded once and only when a figure asks for it; and the options figures share."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from ...config.schema import impossible, option
from ...data.dataset import Dataset, DataSplits, batches, load_run_data
from ...errors import ConfigError
from ...evaluation.evaluate import evaluate
from ...models.family import check_label
from ...runtime import resolve_device
from ...store.checkpoint import load_model
from ...store.metrics import read_metrics

PROJECTIONS = ("pca", "tsne", "dims")


class NotApplicable(Exception):
    """This figure does not apply to this run (e.g. a 2-D manifold of a 1-D latent); the message says why."""


@dataclass(frozen=True)
class PlotOptions:
    """Options of every figure kind; each kind reads the ones it needs. The CLI flags are generated from the
    metadata (vaekit.cli.options), as for the run config."""

    n_samples: int = option(64, "samples: how many", flag="-n")
    temperature: float = option(1.0, "samples: the spread of z, z ~ N(0, T^2 I) for the standard prior", metavar="T")
    n_reconstructions: int = option(16, "reconstructions: test images shown", flag="--n-recon")
    z_range: tuple[float, float] = option((-5.0, 5.0), "manifold, traversal: span of each z", flag="--range",
                                          metavar=("LO", "HI"))
    resolution: int = option(20, "manifold: images per side (2-100)")
    steps: int | None = option(None, "traversal, interpolate: images per row", default_text="21 for a 1-D strip, else 11; 10")
    dims: tuple[int, int] | None = option(None, "manifold, scatter --projection dims: the two z shown when latent_dim > 2",
                                          metavar=("I", "J"), default_text="the two most used")
    projection: str = option("pca", "scatter for latent_dim > 2: pca, tsne or dims")
    max_points: int = option(10000, "scatter: at most this many test points (a fixed random subset)")
    max_rows: int = option(32, "traversal: rows shown, most used dimensions first")
    n_pairs: int = option(5, "interpolate: pairs of test images (the first of classes 0 and 1, 2 and 3, ...)")
    pairs: tuple[tuple[int, int], ...] | None = option(None, "interpolate: test images I and J (repeatable)", flag="--pair",
                                                       metavar=("I", "J"), append=True)
    great_circle: bool = option(False, "interpolate: also along the great circle")
    label: int | None = option(None, "conditional models (cvae): decode given this class",
                               default_text="samples: every class in turn; other figures: class 0")
    seed: int = option(0, "seed of the samples and of the point subset")
    dpi: int = option(100, "pixels per inch of the PNGs (20-400)")

    def __post_init__(self):
        object.__setattr__(self, "z_range", tuple(float(v) for v in self.z_range))  # lists from argparse or JSON
        if self.dims is not None:
            object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        if self.pairs is not None:
            object.__setattr__(self, "pairs", tuple(tuple(int(i) for i in p) for p in self.pairs))
        if len(self.z_range) != 2:
            raise impossible(PlotOptions, "z_range", self.z_range, "give two numbers, LO HI")
        lo, hi = self.z_range
        checks = [
            (self.n_samples >= 1, "n_samples", "ask for at least one sample"),
            (self.temperature > 0, "temperature", "it must be > 0"),
            (self.n_reconstructions >= 1, "n_reconstructions", "show at least one image"),
            (lo < hi, "z_range", "LO must be below HI"),
            (max(abs(lo), abs(hi)) <= 1e3, "z_range", "keep |z| <= 1000"),
            (2 <= self.resolution <= 100, "resolution", "use 2 to 100 images per side"),
            (self.steps is None or 2 <= self.steps <= 100, "steps", "use 2 to 100 images per row"),
            (self.dims is None or (len(self.dims) == 2 and self.dims[0] != self.dims[1] and min(self.dims) >= 0),
             "dims", "give two different latent indices >= 0"),
            (self.projection in PROJECTIONS, "projection", f"choose {', '.join(PROJECTIONS)}"),
            (self.max_points >= 10, "max_points", "show at least 10 points"),
            (self.max_rows >= 1, "max_rows", "show at least one row"),
            (self.n_pairs >= 1, "n_pairs", "ask for at least one pair"),
            (self.pairs is None or (len(self.pairs) >= 1 and all(len(p) == 2 and min(p) >= 0 for p in self.pairs)),
             "pairs", "give pairs of test-set indices >= 0"),
            (20 <= self.dpi <= 400, "dpi", "use 20 to 400"),
            (self.label is None or self.label >= 0, "label", "labels are class indices >= 0"),
        ]
        for ok, name, fix in checks:   # named as Python and the command line name them: n_samples=0 (..., -n)
            if not ok:
                raise impossible(PlotOptions, name, getattr(self, name), fix)


class Run:
    """A saved run opened for figures: weights + config now, test data and metrics on first use."""

    def __init__(self, run_dir: str | Path, device: str = "cpu", data_dir: str | None = None, checkpoint: str = "last",
                 allow_changed_data: bool = False):
        self.dir = Path(run_dir)
        self.model, self.config, self.epoch = load_model(self.dir, resolve_device(device), checkpoint)
        self.data_dir, self.checkpoint, self.allow_changed_data = data_dir, checkpoint, allow_changed_data

    @property
    def name(self) -> str:
        return self.dir.resolve().name

    @property
    def latent_dim(self) -> int:
        """The size of the codes figures show (a hierarchical model's top layer)."""
        return self.model.shown_latent_dim

    @property
    def kind(self) -> str:
        return self.config.model.model

    def describe(self, test_loss: bool = False) -> str:
        """'vae2: vae, latent_dim=2' (+ the test loss): the line that names a run in a figure."""
        text = f"{self.name}: {self.kind}, {self.model.describe_latent()}"
        if self.checkpoint != "last":
            text += f", {self.checkpoint} weights (epoch {self.epoch})"
        if test_loss:
            what = "" if self.uses_kl or self.discrete else " (recon only)"
            text += f", test {self.config.train.loss} loss {self.test_metrics['loss']:.2f}{what}"
        return text

    @property
    def conditional(self) -> bool:
        return self.model.conditional

    def given(self, label: int | None):
        """The model to decode z with: a conditional one with `label` bound (0 when none is given)."""
        check_label(self.model, label, self.name)
        return self.model.given(0 if label is None else label)

    @property
    def discrete(self) -> bool:
        """z is a tuple of codebook entries (the VQ-VAE), not a point of R^latent_dim."""
        return self.model.discrete

    def need_continuous_z(self, figure: str) -> None:
        """Refuse a figure that moves through z for a model with discrete codes (the VQ-VAE)."""
        if self.discrete:
            raise NotApplicable(f"{self.name} is a VQ-VAE: its z is {self.model.code_positions} discrete codes, with no continuous "
                                f"space for the {figure} figure to move through; see samples and reconstructions")

    def check_options(self, opt: PlotOptions) -> None:
        """The options whose sense depends on this run (--dims, --pair, --label), checked before any figure is
        drawn: a bad one is an error before the first PNG, not after several."""
        if opt.dims is not None:
            self.two_dims(opt.dims)
        if opt.pairs:
            self.check_pairs(opt.pairs)
        if opt.label is not None:
            check_label(self.model, opt.label, self.name)

    def check_pairs(self, pairs) -> None:
        """Each --pair I J names test images of this run."""
        if max(max(p) for p in pairs) >= len(self.test):
            raise ConfigError(f"pairs={max(max(p) for p in pairs)} (--pair): the test set of {self.name} has {len(self.test)} "
                              f"images (indices 0..{len(self.test) - 1})")

    def label_note(self, label: int | None) -> str:
        """', given y = 3' in the title of a conditional model's decoded figure."""
        return f", given y = {0 if label is None else label}" if self.conditional else ""

    @cached_property
    def data(self) -> DataSplits:
        return load_run_data(self.config.data, self.data_dir, self.allow_changed_data)

    @cached_property
    def test(self) -> Dataset:
        return self.data.test.to(self.model.device)

    def class_name(self, label: int) -> str:
        return self.data.class_name(label)

    @property
    def label_name(self) -> str:
        """What a label is ("digit" for MNIST, a CSV's label column, "class"), for legends."""
        return self.data.label_name

    @cached_property
    def metrics(self) -> list[dict]:
        """metrics.jsonl: one dict per finished epoch."""
        return read_metrics(self.dir)

    @contextlib.contextmanager
    def seeded(self, seed: int):
        """Draw from torch's RNG with a fixed seed, leaving the caller's RNG state as it was."""
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    @cached_property
    def test_metrics(self) -> dict[str, float]:
        """Test loss, recon and KL in nats/image, as `vaekit eval RUN` (seed 0) reports them."""
        with self.seeded(0):
            return evaluate(self.model, self.test, self.config.train)

    @cached_property
    def _codes(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        mus, kls = [], []
        prior = self.model.prior()
        with torch.no_grad():
            for xb, yb in batches(self.test, 1000):
                q = self.model.given(yb).encode(xb)
                mus.append(self.model.shown(q.mode).float())
                kl = prior.kl_per_dim(q) if self.uses_kl else None   # (B, D) where the prior has one per dimension
                if kl is not None:
                    kls.append(kl)
        mu = torch.cat(mus)                                                   # (N, D)
        usage = torch.cat(kls).mean(0) if kls else mu.var(0, unbiased=False)  # (D,)
        return mu, usage, bool(kls)

    @property
    def mu(self) -> torch.Tensor:
        """Posterior means (the AE's codes) of the test set: (N, D)."""
        return self._codes[0]

    @property
    def usage(self) -> torch.Tensor:
        """How much each latent dimension is used, (D,): average KL per dimension (nats) for a
        model with a posterior, else the variance of the codes over the test set."""
        return self._codes[1]

    @property
    def uses_kl(self) -> bool:
        """True when the encoder outputs a distribution q(z|x) (so a KL exists); False for an AE's point codes."""
        return self.model.stochastic

    @property
    def prior_name(self) -> str:
        return self.model.prior().name

    @property
    def usage_name(self) -> str:
        return "KL" if self._codes[2] else "var"

    def by_usage(self) -> list[int]:
        """Latent dimensions, most used first."""
        return torch.argsort(self.usage.cpu(), descending=True, stable=True).tolist()

    def two_dims(self, dims: tuple[int, int] | None) -> tuple[tuple[int, int], str]:
        """The two latent dimensions a 2-D view shows, and how they were chosen."""
        if dims is not None:
            if max(dims) >= self.latent_dim:
                raise ConfigError(f"dims=({dims[0]}, {dims[1]}) (--dims): {self.name} has latent_dim={self.latent_dim}; "
                                  f"choose two indices in 0..{self.latent_dim - 1}")
            return (dims[0], dims[1]), "chosen"
        if self.latent_dim == 2:
            return (0, 1), ""
        first, second = self.by_usage()[:2]
        return (first, second), f"the two with the highest {self.usage_name}"
