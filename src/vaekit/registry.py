"""`vaekit list`: every registered component, each with one line taken from its own docstring."""

from __future__ import annotations

import functools
import inspect

from .training.resolve import REGISTRIES


def describe(entry) -> str:
    """An entry's one-line description: the first paragraph of its docstring (or its `description`,
    for instances that share a class); for a functools.partial, its function's with the bound keywords."""
    if isinstance(entry, functools.partial):
        bound = ", ".join(f"{k}={v!r}" for k, v in entry.keywords.items())
        return f"{describe(entry.func)} ({bound})" if bound else describe(entry.func)
    text = getattr(entry, "description", "") or inspect.getdoc(entry) or ""
    first = text.strip().split("\n\n")[0]
    return " ".join(first.split()).rstrip(":")


def registries() -> dict[str, dict]:
    """Registry name -> the dict that the code looks its entries up in (vaekit.training.resolve.REGISTRIES)."""
    return dict(REGISTRIES)


def list_components() -> list[tuple[str, str, str]]:
    """(registry, name, description) for every entry of every registry."""
    return [(kind, name, describe(entry)) for kind, registry in registries().items() for name, entry in registry.items()]
