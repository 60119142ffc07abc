"""The import paths of cfgdiff before the layout by layers, kept working as aliases of the new modules.

``import cfgdiff.samplers`` gives the very module object ``cfgdiff.sampling.solvers`` (not a copy), so old
scripts and notebooks keep working and ``isinstance`` checks agree across both names. New code and the docs use
the new paths; ``OLD_PATHS`` is the whole list (``tests/test_layers.py`` imports every one).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# old module path -> new module path; a submodule of an old package follows its package (cfgdiff.metrics.fid)
OLD_PATHS: dict[str, str] = {
    "cfgdiff.schedule": "cfgdiff.core.schedule",
    "cfgdiff.diffusion": "cfgdiff.core.diffusion",
    "cfgdiff.contract": "cfgdiff.core.contract",
    "cfgdiff.toy": "cfgdiff.core.toy",
    "cfgdiff.samplers": "cfgdiff.sampling.solvers",
    "cfgdiff.generate": "cfgdiff.sampling.generate",
    "cfgdiff.distributed_sampling": "cfgdiff.sampling.sharded",
    "cfgdiff.plotting": "cfgdiff.evaluation.plotting",
    "cfgdiff.report": "cfgdiff.evaluation.report",
    "cfgdiff.metrics": "cfgdiff.evaluation.metrics",
    "cfgdiff.features.train": "cfgdiff.training.features",
    "cfgdiff.features": "cfgdiff.evaluation.features",
    "cfgdiff.checkpoint": "cfgdiff.runtime.checkpoint",
    "cfgdiff.cache": "cfgdiff.runtime.cache",
    "cfgdiff.classifier": "cfgdiff.training.classifier",
    "cfgdiff.training.distributed": "cfgdiff.runtime.distributed",
}


def new_path(name: str) -> str | None:
    """The new module path of an old one (``cfgdiff.metrics.fid`` -> ``cfgdiff.evaluation.metrics.fid``)."""
    for old in sorted(OLD_PATHS, key=len, reverse=True):
        if name == old or name.startswith(old + "."):
            return OLD_PATHS[old] + name[len(old):]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.target_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the module is already executed; the import system has just set its __spec__ to the alias's: put its own
        # back, so importlib.resources and pickling see the real module
        module.__spec__ = self.target_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = new_path(fullname)
        if new is None:
            return None
        module = importlib.import_module(new)
        spec = importlib.machinery.ModuleSpec(fullname, _AliasLoader(new), is_package=hasattr(module, "__path__"))
        if spec.submodule_search_locations is not None:  # an old package: its files are the new package's
            spec.submodule_search_locations.extend(module.__path__)
        return spec


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` once (``cfgdiff/__init__.py`` calls it)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())  # before the path finder, which would load a second copy
