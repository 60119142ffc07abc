"""The import rules of the package layout, checked on the source: folders are layers, nothing lower imports higher.

Layers from the ground up (``docs/layout.md`` explains each folder):

    core                      the math and the contract: imports nothing of the package
    runtime, models           checkpoint files, cache dir, process group; the networks (core only)
    guidance, data            guidance over the contract; data loading (core, runtime)
    sampling, adapters        solvers and the guided-run pipeline; other libraries' models as eps_fns
    training                  the Trainer and its runs
    evaluation                sweeps, metrics, feature networks, plots, report pages
    distillation              students trained and evaluated with the layers below
    tuning                    searches over guidance settings, scored by evaluation (``cfgdiff tune``)
    cli, serve                the two faces: the only places that parse, print and pick exit codes

Every import is checked, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cfgdiff

PACKAGE = Path(cfgdiff.__file__).parent

# what each top-level folder may import (itself included implicitly)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "runtime": set(),
    "models": {"core"},
    "guidance": {"core"},
    "data": {"core", "runtime"},
    "sampling": {"core", "guidance", "runtime"},
    "adapters": {"core", "guidance", "sampling"},
    "training": {"core", "runtime", "models", "data"},
    "evaluation": {"core", "runtime", "models", "data", "guidance", "sampling"},
    "distillation": {"core", "runtime", "models", "data", "guidance", "sampling", "training", "evaluation"},
    "tuning": {"core", "runtime", "models", "data", "guidance", "sampling", "evaluation"},
    "cli": {"core", "runtime", "models", "data", "guidance", "sampling", "adapters", "training", "evaluation",
            "distillation", "tuning", "serve"},
    "serve": {"core", "runtime", "models", "data", "guidance", "sampling", "adapters", "training", "evaluation",
              "distillation"},
}
# the package's top level: the version, load_model, the old import paths (``cfgdiff._compat``)
TOP_LEVEL_FILES = {"__init__.py", "__main__.py", "_compat.py"}


def _imports(path: Path) -> set[str]:
    """Every ``cfgdiff.X`` module a file imports (absolute or relative), as its top-level folder X."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PACKAGE).parts
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = list(rel[:-1])[: len(rel) - node.level]
                names = [".".join(["cfgdiff", *base, *([node.module] if node.module else [])])]
            elif node.module:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "cfgdiff" and len(parts) > 1:
                found.add(parts[1])
    return found


def _files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] in ALLOWED)


def test_every_folder_is_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(ALLOWED), f"folders without a layer rule: {sorted(folders - set(ALLOWED))}"
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top <= TOP_LEVEL_FILES, f"modules at the top level beside the layers: {sorted(top - TOP_LEVEL_FILES)}"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_reaches_up(path: Path) -> None:
    layer = path.relative_to(PACKAGE).parts[0]
    wrong = sorted(_imports(path) - ALLOWED[layer] - {layer})
    assert not wrong, (f"{path.relative_to(PACKAGE)} ({layer}) imports {wrong}; "
                       f"{layer} may import {sorted(ALLOWED[layer])}")


@pytest.mark.parametrize("old", sorted(__import__("cfgdiff._compat", fromlist=["OLD_PATHS"]).OLD_PATHS))
def test_old_import_paths_are_the_new_modules(old: str) -> None:
    """``import cfgdiff.samplers`` (the flat layout's path) gives the very module ``cfgdiff.sampling.solvers``."""
    import importlib

    from cfgdiff._compat import OLD_PATHS

    assert importlib.import_module(old) is importlib.import_module(OLD_PATHS[old])


def test_a_submodule_of_an_old_package_is_not_loaded_twice() -> None:
    import importlib

    old = importlib.import_module("cfgdiff.metrics.fid")
    assert old is importlib.import_module("cfgdiff.evaluation.metrics.fid")
    from cfgdiff.samplers import sample_ddim

    from cfgdiff.sampling.solvers import sample_ddim as new

    assert sample_ddim is new


def test_no_command_module_imports_another() -> None:
    """Commands share options through option modules (``cli/*_options.py``, ``cli/arguments.py``), never by
    importing each other."""
    from cfgdiff.cli import COMMAND_MODULES

    commands = set(COMMAND_MODULES.values())
    for module in commands:
        tree = ast.parse((PACKAGE / "cli" / f"{module}.py").read_text(encoding="utf-8"))
        imported = {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cfgdiff.cli.")}
        assert not imported & commands, f"cli/{module}.py imports the command module(s) {sorted(imported & commands)}"
