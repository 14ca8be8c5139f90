"""Command-line flags generated from the dataclasses' field metadata (vaekit.config.schema.option).

One source of truth: a config field's help text, flag name and printed default live beside the
field, and every flag here defaults to None, so only what the user gave overrides the config (or
the preset, or the --config file) underneath.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from ..config.schema import SECTIONS, RunConfig
from ..training.resolve import REGISTRIES

GROUP_TITLES = {"model": "model", "data": "data", "train": "training"}


def _base(hint):
    """int | None -> int; tuple[int, ...] -> tuple[int, ...] (Optional stripped)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _element(hint) -> type:
    """The number type inside a tuple hint: tuple[int, ...] -> int, tuple[tuple[int, int], ...] -> int."""
    while typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint


def help_text(f: dataclasses.Field) -> str:
    meta = f.metadata
    shown = meta.get("default_text")
    if shown is None:
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool):
            shown = "on" if default else "off"
        elif isinstance(default, tuple):
            shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
        else:
            shown = "none" if default is None else f"{default:g}" if isinstance(default, float) else str(default)
    names = f" (one of: {', '.join(REGISTRIES[meta['choices']])})" if meta.get("choices") else ""   # read, not kept
    if meta.get("maximum"):
        names += f" (at most {meta['maximum']:,})"
    return f"{meta['help']}{names} (default: {shown})".replace("%", "%%")   # argparse formats help with %


def add_dataclass_flags(parser, cls: type, dest_prefix: str = "") -> None:
    """One flag per field of `cls` whose metadata has a help text and cli=True; dest is prefix + field name."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or not meta.get("cli", True):
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        names = sorted([flag, *meta.get("aliases", ())], key=lambda n: n.startswith("--"))   # -L before --mc-samples
        kwargs = {"dest": dest_prefix + f.name, "default": None, "help": help_text(f)}
        base = _base(hints[f.name])
        if base is not bool:
            kwargs["metavar"] = meta.get("metavar") or f.name.upper()
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            args = typing.get_args(base)
            kwargs["type"] = _element(base)
            if meta.get("append"):       # tuple of pairs: a repeatable flag of two numbers
                kwargs.update(action="append", nargs=len(typing.get_args(args[0])))
            else:
                kwargs["nargs"] = "+" if args[-1] is Ellipsis else len(args)
        else:
            kwargs["type"] = base
        parser.add_argument(*names, **kwargs)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Every RunConfig field a user may set, grouped by section."""
    for name, cls in SECTIONS.items():
        add_dataclass_flags(parser.add_argument_group(GROUP_TITLES[name]), cls, dest_prefix=f"{name}.")


def given(args: argparse.Namespace, cls: type, dest_prefix: str = "") -> dict:
    """The fields of `cls` that were set on the command line: {field: value}."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, dest_prefix + f.name, None)
        if value is not None:
            out[f.name] = value
    return out


# Options whose default depends on another one: when a flag changes the one, the other is chosen
# afresh (vaekit.training.resolve) unless it was given too. E.g. `--config ae/config.json --model vae` trains
# with the VAE's own loss, not the AE's.
DEPENDS_ON = {("train", "loss"): ("model", "model"), ("model", "likelihood"): ("data", "source"),
              ("data", "val_size"): ("data", "source")}


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """Overlay the flags that were given on `base` (default: RunConfig())."""
    base = base or RunConfig()
    sections = {name: given(args, cls, f"{name}.") for name, cls in SECTIONS.items()}
    for (section, name), (on_section, on_name) in DEPENDS_ON.items():
        if on_name in sections[on_section] and name not in sections[section]:
            sections[section][name] = None
    return RunConfig(**{name: dataclasses.replace(getattr(base, name), **values) for name, values in sections.items()})
