"""The docs and the code say the same: the generated pages are current, every registry entry is in `vaekit list`,
the docs and the help, every `vaekit` name the docs use imports, the package's layers import one way, and the quick
start runs as written."""

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import vaekit
from conftest import REPO, needs_mnist
from vaekit.cli import reference
from vaekit.cli.main import build_parser
from vaekit.registry import registries

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
SRC = REPO / "src" / "vaekit"


@pytest.mark.parametrize("name", sorted(reference.PAGES))
def test_the_generated_pages_are_current(name):
    """docs/reference/{cli,components}.md: regenerate with `python -m vaekit.cli.reference docs/reference`."""
    assert (DOCS / "reference" / name).read_text() == reference.PAGES[name](), \
        f"docs/reference/{name} is stale: run python -m vaekit.cli.reference docs/reference"


def _help_of(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return " ".join(sub.format_help().split())


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_registry_entry_is_listed_documented_and_in_the_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100000")   # argparse wraps help at hyphens ("fashion-" / "mnist")
    listed = subprocess.run([sys.executable, "-m", "vaekit", "list"], capture_output=True, text=True, check=True).stdout
    components = (DOCS / "reference" / "components.md").read_text()
    train_help = _help_of("train")
    for kind, registry in registries().items():
        for name in registry:
            assert re.search(rf"^  {re.escape(name)}\s", listed, re.M), f"{kind} {name} is missing from vaekit list"
            assert f"| `{name}` |" in components, f"{kind} {name} is missing from docs/reference/components.md"
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", train_help), \
                f"{kind} {name} is missing from vaekit train --help"


def _names_the_docs_use() -> set[str]:
    names = set()
    for page in PAGES:
        text = page.read_text()
        names |= set(re.findall(r"(?<![\w.])vaekit\.([A-Za-z_]\w*)", text))
        for group in re.findall(r"from vaekit import ([\w, ]+)", text):
            names |= {n.strip() for n in group.split(",") if n.strip()}
    return names


def test_every_name_the_docs_use_imports():
    names = _names_the_docs_use()
    assert {"fit", "RunConfig", "evaluate_run"} <= names
    missing = sorted(n for n in names if not hasattr(vaekit, n))
    assert not missing, f"the docs use vaekit names that do not import: {missing}"
    assert set(vaekit.__all__) <= {n for n in dir(vaekit)}


# the packages in the order they may import one another: each only from those before it (docs/architecture.md)
LAYERS = [{"errors", "torch_private"}, {"files", "plugins"}, {"runtime", "distributed"}, {"config"}, {"accel"}, {"data"}, {"models"}, {"store"},
          {"evaluation"}, {"training"}, {"outputs"}, {"integrations", "explore"}, {"registry"}, {"cli"}, {"__main__"}]


def _room(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def test_the_packages_import_one_way():
    layer = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
    rooms = {_room(p) for p in SRC.rglob("*.py")} - {"__init__"}
    assert rooms == set(layer), f"a folder or module of src/vaekit is not in the test's layers: {rooms ^ set(layer)}"
    wrong = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "__init__.py":
            continue
        here = _room(path)
        depth = len(path.relative_to(SRC).parts) - 1   # folders below vaekit/
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.level > depth and node.module:
                target = node.module.split(".")[0]
                if target in layer and target != here and layer[target] >= layer[here]:
                    wrong.append(f"{path.relative_to(SRC)} imports {node.module}")
    assert not wrong, "imports that run up the layers: " + "; ".join(wrong)


def _blocks(page: Path, heading: str) -> list[tuple[str, str]]:
    """The fenced (language, code) blocks of `page` between `heading` and the next heading of its level."""
    text = page.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


QUICK_STARTS = [REPO / "README.md", DOCS / "getting-started.md"]


def test_the_quick_starts_are_the_same():
    """The README's and the getting-started page's quick start: one text, run once below."""
    assert _blocks(QUICK_STARTS[0], "## Quick start") == _blocks(QUICK_STARTS[1], "## Quick start")


@pytest.mark.slow
@pytest.mark.subprocess
@needs_mnist
def test_the_quick_start_runs_as_written(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "VAEKIT_DATA": str(Path(os.environ["VAEKIT_DATA"]).resolve())}
    for language, code in _blocks(QUICK_STARTS[0], "## Quick start"):
        if language == "bash":
            for line in code.splitlines():
                command = line.split("#")[0].strip()
                if not command:
                    continue
                argv = shlex.split(command)
                assert argv[0] == "vaekit", command
                done = subprocess.run([sys.executable, "-m", "vaekit", *argv[1:]], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
        else:
            done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "vae" / "samples.png").stat().st_size > 0
    assert {p.name for p in (tmp_path / "runs" / "vae" / "figures").iterdir()} >= {"manifold.png", "scatter.png",
                                                                                     "traversal.png"}
    assert (tmp_path / "runs" / "vae2d" / "samples.png").stat().st_size > 0
