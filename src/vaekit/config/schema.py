"""Frozen configuration dataclasses, saved as config.json next to the weights.

A run is fully described by RunConfig(model, data, train). Models never mutate their
config; changing an option means building a new config (dataclasses.replace).

Each field carries its help text in `field(metadata=...)`: the `vaekit train` flags, their help
and the defaults they print are generated from it (vaekit.cli.options), so they cannot drift apart.
A default of None means "chosen from the other options" (vaekit.training.resolve), in the library, so
`fit(RunConfig(...))` from Python behaves exactly as the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write_text, parse_json
from ..plugins import MODULE_NAME

PIXEL_MODES = ("grey", "dynamic", "static")  # grey in [0,1]; Bernoulli draw per epoch; one fixed draw
KL_MODES = ("auto", "analytic", "mc")        # auto: closed form where the prior has one, else Monte Carlo
# joint: encoder and decoder every step; alternating: variational EM, E-steps on phi (encoder), M-steps on theta.
# Each schedule names the TrainConfig fields it reads (a field no chosen component reads is refused).
SCHEDULE_READS = {"joint": (), "alternating": ("e_steps", "m_steps")}
SCHEDULES = tuple(SCHEDULE_READS)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
NLL_PRECISIONS = (*PRECISIONS, "int8")   # the estimate also has int8 products (evaluate.log_likelihood)
COMPILE_MODES = ("auto", "on", "off")
CHECKPOINTS = ("last", "best")               # which weights eval / sample / plot load
MAX_IMAGE_SIZE = 4096                        # --image-size: 4096 x 4096 x 3 floats is 200 MB per image already
MAX_INT = 2**31 - 1                          # any whole-number field without a maximum of its own
MAX_WIDTH = 65_536                           # a layer's width, a latent size, a codebook: far beyond one machine's use
MAX_EPOCHS = 100_000                         # the IWAE paper's schedule is 3,280 epochs
MAX_PLUGINS = 64


def option(default, help: str, *, flag: str | None = None, aliases: tuple[str, ...] = (), metavar=None,
           default_text: str | None = None, cli: bool = True, append: bool = False, default_factory=None,
           choices: str | None = None, resumable: bool = False, shapes_step: bool = True, maximum: int | None = None):
    """A config field with its command-line help. flag: the option name (default --field-name); default_text:
    what the help prints as the default (default: the value itself); cli=False: filled in by vaekit, no flag;
    append: a repeatable flag (a tuple of pairs); choices: the registry whose names the field takes (its help lists
    them, read from the registry: vaekit.registry.choices); resumable: a resumed run may change it; shapes_step=False:
    it only schedules the run (or says where data is) and does not enter the compiled training step's graph, so the
    step built ahead of time is shared across its values; maximum: the largest whole number it takes (each element of a
    tuple; default MAX_INT), what one machine can meet: the CLI, --config files and Python are held to it alike."""
    meta = {"help": help, "flag": flag, "aliases": aliases, "metavar": metavar, "default_text": default_text, "cli": cli,
            "append": append, "choices": choices, "resumable": resumable, "shapes_step": shapes_step,
            "maximum": maximum}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def options_of(cls: type, options, fields: dict):
    """options (an instance of the dataclass cls, or None: its defaults) with `fields` replaced: how a library call
    takes an options object or its fields as keywords. An unknown field is a one-line error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown_names = sorted(set(fields) - names)
    if unknown_names:
        raise ConfigError(f"{', '.join(unknown_names)}: not an option of {cls.__name__}; its options are "
                          f"{', '.join(sorted(names))}")
    return dataclasses.replace(options or cls(), **fields)


def flag_of(section: type, name: str) -> str:
    """The command-line flag of a config field: '--latent-dim' for ModelConfig.latent_dim."""
    meta = {f.name: f.metadata for f in dataclasses.fields(section)}[name]
    return meta.get("flag") or "--" + name.replace("_", "-")


def field_ref(section: type, name: str) -> str:
    """'ModelConfig.latent_dim, --latent-dim': how an error names an option for Python and CLI users alike."""
    return f"{section.__name__}.{name}, {flag_of(section, name)}"


def impossible(section: type, name: str, value, need: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is impossible ({field_ref(section, name)}): {need}")


def unknown(section: type, name: str, value, choices) -> ConfigError:
    return ConfigError(f"{name} {value!r} is unknown ({field_ref(section, name)}); choose one of {', '.join(map(str, choices))}")


@functools.cache
def _hints(section: type) -> dict:
    return typing.get_type_hints(section)


def _accepts(hint, value) -> bool:
    """Whether a JSON or Python value fits a field's annotation (int, float, str, bool, tuples, Optional)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (tuple, list)):
            return False
        if args[-1] is Ellipsis:
            return all(_accepts(args[0], v) for v in value)
        return len(value) == len(args) and all(_accepts(a, v) for a, v in zip(args, value, strict=True))
    return True


def _short(value) -> str:
    """A number as an error may print it (a 5,000-digit integer is not printable in Python 3.11, and not readable)."""
    if isinstance(value, int) and abs(value) >= 10**15:
        return f"a {value.bit_length()}-bit number"
    return repr(value)


def check_bounds(section: type, cfg) -> None:
    """Every whole number of `cfg` (and of its tuples) is at most its field's maximum (metadata; default MAX_INT)."""
    for f in dataclasses.fields(section):
        value, maximum = getattr(cfg, f.name), f.metadata.get("maximum") or MAX_INT
        seq = (tuple, list)   # lists from JSON or Python, before __post_init__ makes them tuples
        numbers = [v for v in (value if isinstance(value, seq) else (value,)) for v in (v if isinstance(v, seq) else (v,))]
        if any(isinstance(v, int) and not isinstance(v, bool) and v > maximum for v in numbers):
            shown = _short(max(v for v in numbers if isinstance(v, int)))
            raise ConfigError(f"{f.name}={shown} is impossible ({field_ref(section, f.name)}): use at most {maximum:,}")


def check_types(section: type, cfg) -> None:
    """Each field holds a value of its annotated type: a config.json edited by hand (2.5 for an int, a string
    for a number, NaN) is a one-line error, not a crash later."""
    for name, hint in _hints(section).items():
        value = getattr(cfg, name)
        if not _accepts(hint, value):
            if isinstance(value, float) and not math.isfinite(value):
                raise impossible(section, name, value, "it must be a finite number")
            kind = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise impossible(section, name, value, f"it must be {kind}")


def _check_choice(section: type, cfg, name: str, choices) -> None:
    if getattr(cfg, name) not in choices:
        raise unknown(section, name, getattr(cfg, name), choices)


def _check_positive(section: type, cfg, name: str, allow_zero: bool = False, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise impossible(section, name, value, "it must be a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise impossible(section, name, value, f"it must be {'>= 0' if allow_zero else '> 0'}")


@dataclass(frozen=True)
class ModelConfig:
    model: str = option("vae", "the model; see `vaekit list`", choices="models")
    input_shape: tuple[int, ...] = option((1, 28, 28), "(C, H, W), filled in from the data", cli=False, maximum=2**24)
    latent_dim: int = option(20, "size of z (vqvae with the mlp: the number of codes)", maximum=MAX_WIDTH)
    hidden_dims: tuple[int, ...] = option((400,), "encoder layer widths (conv: channel widths of stride-2 convs); "
                                          "the decoder mirrors them", flag="--hidden", metavar="N", maximum=MAX_WIDTH)
    activation: str = option("relu", "the nonlinearity of the encoder and decoder bodies", choices="activations")
    arch: str = option("mlp", "the encoder and decoder bodies (conv: for images of any C x H x W, --hidden then gives "
                                        "channel widths)", choices="architectures")
    residual: bool = option(False, "conv: a residual block (two 3x3 convs + skip) after each stage")
    likelihood: str | None = option(None, "p(x|z) (gaussian: a fixed sigma, --obs-std; discretised-logistic: "
                                    "8-bit images)",
                                    default_text="bernoulli; gaussian-learned for tables (--data csv)", choices="likelihoods")
    obs_std: float = option(0.1, "gaussian likelihoods: sigma (gaussian-learned: its starting value)")
    prior: str = option("standard", "p(z); see `vaekit list`", choices="priors")
    prior_components: int | None = option(None, "mog: mixture components; vamp: pseudo-inputs", metavar="K",
                                          default_text="mog 10, vamp 500", maximum=100_000)
    posterior: str = option("gaussian", "q(z|x); see `vaekit list`", choices="posteriors")
    upper_latent_dims: tuple[int, ...] = option((50,), "hvae: sizes of the stochastic layers above z_1 (latent_dim)",
                                                flag="--upper-latent", metavar="N", maximum=MAX_WIDTH)
    upper_hidden_dims: tuple[int, ...] = option((50, 50), "hvae: widths of the layers between two stochastic layers",
                                                flag="--upper-hidden", metavar="N", maximum=MAX_WIDTH)
    flow_steps: int = option(2, "iaf: flow steps after the Gaussian", maximum=64)
    flow_hidden: int = option(256, "iaf: width of each step's autoregressive network", maximum=MAX_WIDTH)
    num_classes: int = option(0, "cvae: label classes, filled in from the data", cli=False, maximum=100_000)
    codebook_size: int = option(128, "vqvae: K, the codes in the codebook", metavar="K", maximum=MAX_WIDTH)
    code_dim: int = option(8, "vqvae: E, the numbers per code", metavar="E", maximum=MAX_WIDTH)
    codebook_ema: bool = option(False, "vqvae: move the codes by exponential moving averages (decay 0.99)")

    def __post_init__(self):
        check_types(ModelConfig, self)
        check_bounds(ModelConfig, self)
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        for name in ("hidden_dims", "upper_latent_dims", "upper_hidden_dims"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("latent_dim", "obs_std", "codebook_size", "code_dim", "flow_steps", "flow_hidden"):
            _check_positive(ModelConfig, self, name)
        _check_positive(ModelConfig, self, "prior_components", optional=True)
        _check_positive(ModelConfig, self, "num_classes", allow_zero=True)
        for name in ("hidden_dims", "upper_latent_dims", "upper_hidden_dims", "input_shape"):
            if min(getattr(self, name), default=1) <= 0:
                raise impossible(ModelConfig, name, getattr(self, name), "sizes must be > 0")
        if not self.upper_latent_dims:
            raise impossible(ModelConfig, "upper_latent_dims", self.upper_latent_dims, "give at least one layer above z_1")


@dataclass(frozen=True)
class DataConfig:
    source: str = option("mnist", "the data: a named data set, or your own files with --path; see `vaekit list`",
                         flag="--data", choices="data sources")
    pixels: str = option("grey", "grey in [0, 1], dynamic (a new Bernoulli draw every batch) or static (one draw)")
    val_size: int | None = option(None, "validation examples carved from the training set (0: none)",
                                  default_text="10% of the training set, at most 5000", shapes_step=False)
    data_dir: str | None = option(None, "dataset cache", default_text="$VAEKIT_DATA, else ~/.cache/vaekit", shapes_step=False)
    limit: int | None = option(None, "train on the first N training examples only", metavar="N", shapes_step=False)
    path: str | None = option(None, "folder, npy, csv: the folder of images, the .npy/.npz file or the .csv file", shapes_step=False)
    image_size: int | None = option(None, "folder: resize every image to N x N", metavar="N")
    label_column: str | None = option(None, "csv: the column of class labels (not a feature)", metavar="NAME")
    test_fraction: float = option(0.1, "folder, npy, csv: share held out as the test set (fixed seed)", shapes_step=False)
    fingerprint: str | None = option(None, "size and hash of the data files read, filled in at train time", cli=False, shapes_step=False)

    def __post_init__(self):
        check_types(DataConfig, self)
        check_bounds(DataConfig, self)
        _check_choice(DataConfig, self, "pixels", PIXEL_MODES)
        _check_positive(DataConfig, self, "val_size", allow_zero=True, optional=True)
        _check_positive(DataConfig, self, "limit", optional=True)
        _check_positive(DataConfig, self, "image_size", optional=True)
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise impossible(DataConfig, "image_size", self.image_size, f"use at most {MAX_IMAGE_SIZE} pixels per side")
        if self.path is not None:
            if not str(self.path).strip():
                raise impossible(DataConfig, "path", self.path, "give the file or folder to read")
            # stored absolute, so eval / sample / plot of the run find the file from any folder
            object.__setattr__(self, "path", str(Path(str(self.path)).expanduser().absolute()))
        if not 0 < self.test_fraction < 1:
            raise impossible(DataConfig, "test_fraction", self.test_fraction, "it must be between 0 and 1 (e.g. 0.1)")


@dataclass(frozen=True)
class TrainConfig:
    loss: str | None = option(None, "the objective (elbo with --beta: the beta-VAE); see `vaekit list`",
                              default_text="the model's own: elbo for vae and cvae, ae for ae, vq for vqvae", choices="losses")
    beta: float = option(1.0, "elbo: weight of the KL term (1 = the ELBO)")
    kl_warmup_epochs: float = option(0.0, "elbo: the KL weight rises linearly from 0 to beta over this many epochs")
    capacity: float = option(25.0, "loss capacity: C_max, the target KL in nats")
    capacity_epochs: float = option(10.0, "loss capacity: epochs for C to rise from 0 to C_max")
    gamma: float = option(1000.0, "loss capacity: weight of |KL - C|")
    commitment: float = option(0.25, "loss vq: weight of the commitment term ||z_e - sg(e)||^2")
    prior_epochs: int = option(10, "vqvae: epochs of the autoregressive code prior fitted after training", shapes_step=False, maximum=MAX_EPOCHS)
    mc_samples: int = option(1, "samples of z per example: L for elbo, k for iwae", flag="--mc-samples",
                             aliases=("-L", "--k"), maximum=100_000)
    kl: str = option("auto", "KL estimator: analytic (closed form), mc (log q(z|x) - log p(z) on the same samples) "
                     "or auto (closed form where the prior has one)")
    epochs: int = option(10, "total epochs", resumable=True, shapes_step=False, maximum=MAX_EPOCHS)
    batch_size: int = option(128, "examples per optimiser step", shapes_step=False, maximum=2**24)
    batch_growth: tuple[tuple[int, int], ...] = option(
        (), "from epoch EPOCH (counting from 0) on, SIZE examples per step instead; repeatable, in increasing epochs. "
        "A larger batch quiets the gradient as a lower lr would (Smith et al. 2018) and runs faster per image",
        flag="--batch-size-from", metavar=("EPOCH", "SIZE"), append=True, default_text="none", shapes_step=False)
    lr: float = option(1e-3, "Adam learning rate", shapes_step=False)
    lr_schedule: str = option("constant", "the learning rate over training (iwae: 3^i epochs at lr * 10^(-i/7), i = "
                              "0..7; cosine: to 0 at the last epoch)", choices="learning-rate schedules", shapes_step=False)
    lr_warmup_epochs: float = option(0.0, "the learning rate rises linearly from 0 over this many epochs, then follows "
                                     "its schedule", shapes_step=False)
    schedule: str = option("joint", "joint, or alternating (variational EM: E-steps on the encoder, M-steps on the decoder)")
    e_steps: int = option(1, "alternating: encoder steps (E-step) per round", maximum=1_000_000)
    m_steps: int = option(1, "alternating: decoder steps (M-step) per round", maximum=1_000_000)
    adam_eps: float = option(1e-8, "Adam epsilon (the IWAE paper: 1e-4)")
    max_minutes: float | None = option(None, "stop after the epoch in which this invocation has trained this long "
                                       "(a budget per invocation; --resume may change it)", resumable=True, shapes_step=False)
    early_stop: int | None = option(None, "stop after N epochs without a better validation loss", metavar="N",
                                    resumable=True, shapes_step=False, maximum=MAX_EPOCHS)
    checkpoint_every: float = option(5.0, "minutes between mid-epoch checkpoints (a kill loses at most this much)",
                                     metavar="MINUTES", resumable=True, shapes_step=False)
    seed: int = option(0, "seed of the weights, the shuffling and the binarisation", shapes_step=False, maximum=2**32 - 1)
    device: str = option("auto", "auto, cpu or cuda", resumable=True, shapes_step=False)
    threads: int | None = option(None, "CPU threads for training", metavar="N",
                                 default_text="the CPUs of this process that are idle when training starts",
                                 resumable=True, shapes_step=False, maximum=4096)
    report: bool = option(True, "vaekit train: write RUN/report.html when training ends (--no-report: do not; a "
                          "resumed run keeps the choice). fit() from Python leaves the report to write_report(RUN)",
                          resumable=True, shapes_step=False)
    precision: str = option("auto", "auto (bf16 autocast where this machine runs it faster; measured once and cached), "
                            "fp32 or bf16; weights and sums stay fp32")
    compile: str = option("auto", "compile the training step (forward, backward and Adam as one graph where it can): "
                          "on (built ahead of time once per machine and model into the cache, then loaded by every "
                          "later run; torch.compile where that cannot be), off (eager), or auto (eager, except runs "
                          "of 10,000 steps or more, which take the compiled step as on does). The cache changes how "
                          "long a run takes, never its numbers", resumable=True, shapes_step=False)

    def __post_init__(self):
        if isinstance(self.batch_growth, (list, tuple)):   # lists from argparse or JSON
            object.__setattr__(self, "batch_growth", tuple(tuple(p) if isinstance(p, (list, tuple)) else p
                                                           for p in self.batch_growth))
        check_types(TrainConfig, self)
        check_bounds(TrainConfig, self)
        epochs_from = [e for e, _ in self.batch_growth]
        if any(e < 1 for e in epochs_from) or epochs_from != sorted(set(epochs_from)):
            raise impossible(TrainConfig, "batch_growth", self.batch_growth, "its epochs must be 1 or more and increasing "
                             "(e.g. --batch-size-from 2 512 --batch-size-from 4 1024)")
        if any(size < 1 for _, size in self.batch_growth):
            raise impossible(TrainConfig, "batch_growth", self.batch_growth, "its sizes must be 1 or more")
        for name in ("lr_warmup_epochs", "beta", "kl_warmup_epochs", "capacity", "capacity_epochs", "gamma", "commitment", "prior_epochs", "epochs"):
            _check_positive(TrainConfig, self, name, allow_zero=True)
        for name in ("mc_samples", "batch_size", "lr", "e_steps", "m_steps", "adam_eps"):
            _check_positive(TrainConfig, self, name)
        _check_positive(TrainConfig, self, "max_minutes", optional=True)
        _check_positive(TrainConfig, self, "checkpoint_every")
        _check_positive(TrainConfig, self, "threads", optional=True)
        _check_positive(TrainConfig, self, "early_stop", optional=True)
        _check_choice(TrainConfig, self, "kl", KL_MODES)
        _check_choice(TrainConfig, self, "schedule", SCHEDULES)
        _check_choice(TrainConfig, self, "device", DEVICES)
        _check_choice(TrainConfig, self, "precision", PRECISIONS)
        _check_choice(TrainConfig, self, "compile", COMPILE_MODES)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def resumable_fields() -> tuple[str, ...]:
    """The TrainConfig fields a resumed run may change (metadata resumable=True)."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable"))


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plugins: tuple[str, ...] = ()   # the modules of users' own components the run uses (vaekit.plugins), filled in by fit

    def __post_init__(self):
        plugins = self.plugins
        if not isinstance(plugins, (list, tuple)) or len(plugins) > MAX_PLUGINS or not all(
                isinstance(m, str) and MODULE_NAME.fullmatch(m) for m in plugins):
            raise ConfigError(f"plugins={_short(plugins)} is impossible: a list of at most {MAX_PLUGINS} module names")
        object.__setattr__(self, "plugins", tuple(plugins))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["plugins"]:
            del d["plugins"]   # the config.json of a run of vaekit's own components is as it always was
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        if not isinstance(d, dict) or set(d) - {*SECTIONS, "plugins"} or any(v is None for v in d.values()):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"a run config has the sections {', '.join(SECTIONS)} (and plugins); got {got}")
        return cls(**{k: _build(SECTIONS[k], d.get(k, {})) for k in SECTIONS}, plugins=d.get("plugins", ()))

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        try:
            return cls.from_dict(parse_json(Path(path).read_text()))
        except (OSError, ValueError) as e:   # UnicodeDecodeError and JSON's errors are ValueErrors
            raise ConfigError(f"cannot read config {path} ({e}); pass a config.json vaekit wrote") from None


def _build(kind, values: dict):
    if not isinstance(values, dict):
        raise ConfigError(f"the {kind.__name__} section must be a JSON object of fields; got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown_names = set(values) - names
    if unknown_names:
        raise ConfigError(f"unknown {kind.__name__} field(s): {', '.join(sorted(unknown_names))}")
    try:
        return kind(**values)
    except TypeError as e:
        raise ConfigError(f"bad {kind.__name__}: {e}") from None
