"""From the options a user gave to the options a run uses: defaults that depend on other options are
chosen here, in the library (so Python and the command line behave the same), and an option that no
chosen component reads is refused instead of silently doing nothing.

Every model, loss, likelihood, architecture and prior names the config fields only it reads (`reads`);
a field that some component reads, set away from its default while none of the chosen ones reads it,
is an error that says which choice would use it.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config.schema import SCHEDULE_READS, SECTIONS, ModelConfig, RunConfig, TrainConfig, flag_of, unknown
from ..data.dataset import DataSplits
from ..data.sources import SOURCES, default_likelihood
from ..errors import ConfigError
from ..models.family import MODELS, model_class
from ..models.likelihoods import LIKELIHOODS
from ..models.nets import ACTIVATIONS, ARCHITECTURES
from ..models.objectives import LOSSES
from ..models.posteriors import POSTERIORS
from ..models.priors import PRIORS
from .schedules import LR_SCHEDULES

# The registries a config field names (its metadata `choices`): what `vaekit list`, the help and the docs list, and what
# check_names checks a config against. A new registry is one line here.
REGISTRIES = {"models": MODELS, "losses": LOSSES, "priors": PRIORS, "posteriors": POSTERIORS,
              "architectures": ARCHITECTURES, "activations": ACTIVATIONS, "likelihoods": LIKELIHOODS,
              "data sources": SOURCES, "learning-rate schedules": LR_SCHEDULES}


BUILT_IN = {kind: dict(registry) for kind, registry in REGISTRIES.items()}   # before any user's module could add to them


def reads_of(entry) -> tuple[str, ...]:
    """The config fields a registry entry reads (a functools.partial: its function's)."""
    return getattr(entry, "reads", None) or getattr(getattr(entry, "func", None), "reads", ())


def resolve(config: RunConfig, data: DataSplits | None = None) -> RunConfig:
    """Fill the defaults that depend on other options: the loss from the model, the likelihood from the
    data source, the validation size, and (given the data) the input shape and label classes."""
    check_names(config)
    model_cls = model_class(config.model.model)
    model = dataclasses.replace(config.model, likelihood=config.model.likelihood or default_likelihood(config.data.source))
    train = dataclasses.replace(config.train, loss=config.train.loss or model_cls.default_loss)
    data_cfg = config.data
    if data is not None:
        model = dataclasses.replace(model, input_shape=data.input_shape, num_classes=data_classes(model_cls, data))
        data_cfg = dataclasses.replace(data_cfg, val_size=0 if data.val is None else len(data.val))
    return RunConfig(model, data_cfg, train)


def data_classes(model_cls, data: DataSplits) -> int:
    """num_classes for the model config: the data's label classes for a conditional model, else 0."""
    if not model_cls.conditional:
        return 0
    if data.train.y is None:
        raise ConfigError(f"model {model_cls.__name__} is conditioned on labels, but {data.name} has none; use labelled "
                          "data (MNIST, an image folder with one sub-folder per class, a CSV with --label-column)")
    return data.num_classes


def chosen_components(config: RunConfig) -> dict[str, object]:
    """What the config picks from each registry (plus the schedule), by kind."""
    lookups = {"model": (MODELS, config.model.model), "loss": (LOSSES, config.train.loss),
               "likelihood": (LIKELIHOODS, config.model.likelihood), "architecture": (ARCHITECTURES, config.model.arch),
               "prior": (PRIORS, config.model.prior), "posterior": (POSTERIORS, config.model.posterior)}
    chosen = {kind: registry[name] for kind, (registry, name) in lookups.items() if name in registry}
    chosen["schedule"] = _Schedule(SCHEDULE_READS.get(config.train.schedule, ()))
    return chosen


@dataclasses.dataclass(frozen=True)
class _Schedule:
    reads: tuple[str, ...]


def _all_readers() -> dict[str, list[str]]:
    """field -> ['loss capacity', 'model vqvae', ...]: every registered component that reads it."""
    readers: dict[str, list[str]] = {}
    for kind, registry in (("model", MODELS), ("loss", LOSSES), ("likelihood", LIKELIHOODS),
                           ("architecture", ARCHITECTURES), ("prior", PRIORS), ("posterior", POSTERIORS)):
        for name, entry in registry.items():
            for f in reads_of(entry):
                readers.setdefault(f, []).append(f"{kind} {name}")
    for name, fields in SCHEDULE_READS.items():
        for f in fields:
            readers.setdefault(f, []).append(f"schedule {name}")
    return readers


def check_applicable(config: RunConfig) -> None:
    """Refuse an option that does nothing with the chosen model, loss, likelihood, architecture, prior, posterior
    and schedule; also a closed-form KL demanded where the prior has none."""
    read = {f for entry in chosen_components(config).values() for f in reads_of(entry)}
    defaults = {f.name: (section, f.default) for section in (ModelConfig, TrainConfig) for f in dataclasses.fields(section)}
    for f, users in _all_readers().items():
        section, default = defaults[f]
        cfg = config.model if section is ModelConfig else config.train
        if f not in read and getattr(cfg, f) != default:
            raise ConfigError(f"{flag_of(section, f)} {getattr(cfg, f)} ({section.__name__}.{f}) does nothing here: "
                              f"it applies to {' or '.join(users)}; drop it")
    if config.train.kl == "analytic" and "kl" in read and not getattr(PRIORS.get(config.model.prior), "closed_form_kl", True):
        raise ConfigError(f"--kl analytic (TrainConfig.kl): the prior {config.model.prior!r} has no closed-form KL; "
                          "use --kl auto or mc")
    if config.train.early_stop is not None and config.data.val_size == 0:
        raise ConfigError("--early-stop (TrainConfig.early_stop) watches the validation loss, and val_size is 0; "
                          "give --val-size N or drop --early-stop")


def _registry_fields(config: RunConfig):
    """(section, field name, registry kind, value) of every config field that names a registry entry."""
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            kind = f.metadata.get("choices")
            if kind in REGISTRIES:
                yield section, f.name, kind, getattr(getattr(config, name), f.name)


def check_names(config: RunConfig) -> None:
    """Every registry name in the config exists (one-line errors naming the field and the flag); None: chosen later
    (vaekit.resolve)."""
    for section, field_name, kind, value in _registry_fields(config):
        if value is not None and value not in REGISTRIES[kind]:
            raise unknown(section, field_name, value, REGISTRIES[kind])


def plugin_modules(config: RunConfig) -> tuple[str, ...]:
    """The modules of the registry entries the config names that vaekit did not register itself (users' own
    components: vaekit.plugins), in the order of the config's fields; recorded in the run's config.json so that later
    commands can name what they need."""
    modules = []
    for _, _, kind, value in _registry_fields(config):
        entry = REGISTRIES[kind].get(value)
        if entry is not None and entry is not BUILT_IN[kind].get(value):
            modules.append(getattr(getattr(entry, "func", entry), "__module__", None) or "__main__")
    return tuple(dict.fromkeys(modules))


def differences(a: RunConfig, b: RunConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """'lr 0.001 -> 0.5' for each field that differs between two configs (train fields in `ignore` skipped)."""
    out = []
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            if f.name in ignore:
                continue
            va, vb = getattr(getattr(a, name), f.name), getattr(getattr(b, name), f.name)
            if va != vb:
                out.append(f"{f.name} {va!r} -> {vb!r}")
    return out


def check_support(model, data: DataSplits) -> None:
    """Refuse data outside the likelihood's support (Bernoulli: [0, 1]) before it trains into NaNs."""
    support = getattr(model.likelihood, "support", None)
    # 8-bit storage (x = stored / 255) is inside [0, 1] by construction, and is not read through to check it
    splits = [ds.x for ds in (data.train, data.val, data.test) if ds is not None and len(ds) and not ds.stored]
    if support is None or not splits:
        return
    ranges = [torch.aminmax(x) for x in splits]   # one pass over each split, not two
    lo, hi = min(r.min.item() for r in ranges), max(r.max.item() for r in ranges)
    if lo < support[0] or hi > support[1]:
        what = " (a table, standardised)" if data.mean is not None else ""
        raise ConfigError(f"the {model.config.likelihood} likelihood models data in [{support[0]:g}, {support[1]:g}] but "
                          f"{data.name}{what} spans [{lo:.3g}, {hi:.3g}]; pass --likelihood gaussian-learned (or gaussian)")
    levels = getattr(model.likelihood, "levels", None)
    if levels is not None:
        steps = levels - 1
        off = max(((x * steps) - (x * steps).round()).abs().max().item() for x in splits)
        if off > 1e-3:
            raise ConfigError(f"the {model.config.likelihood} likelihood models {levels}-level (8-bit) images, k/{steps}, "
                              f"but {data.name} has values between the levels (resized images?); use --likelihood "
                              f"bernoulli or gaussian-learned")
