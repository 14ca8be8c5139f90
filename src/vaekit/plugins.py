"""Users' own components: a module that adds a model, loss, prior, posterior, likelihood, architecture or data source
to vaekit's registries (one registry line, as vaekit's own do) is a plugin.

Two ways in, for the command line and for every later command on a run that uses one:
- an installed package declares it as an entry point of the group `vaekit.plugins` (in its pyproject.toml:
  [project.entry-points."vaekit.plugins"] mine = "mypackage.components"); `import vaekit` imports each;
- `--import MODULE` (any command; repeatable) imports a module by name, from the current folder or PYTHONPATH.

A run records in its config.json the modules its components came from (RunConfig.plugins); a later command on the
run refuses in one line, naming the module, when that module is not loaded. Nothing is imported because a run folder
names it: a folder may come from anyone, and importing a module runs its code.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys

from .errors import CheckpointError, ConfigError, in_one_line

GROUP = "vaekit.plugins"
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def load_entry_points() -> list[str]:
    """Import every installed plugin (entry points of the group vaekit.plugins; one that points at a function is
    called once the module is imported, to register). A plugin that fails is one line on stderr, not a failed
    import of vaekit. Returns the names loaded."""
    loaded = []
    for entry in importlib.metadata.entry_points(group=GROUP):
        try:
            target = entry.load()
            if callable(target) and not isinstance(target, type(sys)):
                target()
            loaded.append(entry.name)
        except Exception as e:  # noqa: BLE001  (someone else's code: say which plugin failed, go on without it)
            print(f"vaekit: the plugin {entry.name!r} ({entry.value}) failed to load and is skipped: {in_one_line(e)}",
                  file=sys.stderr)
    return loaded


def import_modules(names) -> None:
    """--import MODULE ...: import each (its registry lines run); a name that is not a module is one line."""
    for name in names or ():
        if not MODULE_NAME.fullmatch(name):
            raise ConfigError(f"--import {name!r} is not a module name; give a dotted name such as mypackage.losses "
                              "(the file mylosses.py in this folder is --import mylosses)")
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001  (anything the module raises while it is imported)
            raise ConfigError(f"--import {name}: the module cannot be imported ({in_one_line(e)}); check its name, and "
                              "that it is on PYTHONPATH or in the current folder") from None


def check_loaded(modules, where) -> None:
    """Refuse a run (or a model folder) whose config names plugin modules that are not loaded in this process."""
    missing = [m for m in modules if m not in sys.modules]
    if missing:
        first = missing[0]
        raise CheckpointError(f"{where} uses components from the plugin module {first!r}, which is not loaded: pass "
                              f"--import {first} (Python: import {first} first), or install the package that declares "
                              f"it as a {GROUP} entry point")
