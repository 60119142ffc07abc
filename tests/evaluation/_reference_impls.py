"""The maintained implementations the fidelity/diversity metrics are held equal to, imported or skipped.

torch-fidelity's package ``__init__`` imports torchvision (for its feature networks), which the KID formula
does not need: when that import fails, ``torch_fidelity/metric_kid.py`` is loaded from the installed package
with only its non-network helpers (``helpers``, ``defaults``, ``deprecations``) and a stub for ``utils``, so the
test still runs torch-fidelity's own ``mmd2`` and ``kid_features_to_metric``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def torch_fidelity_kid(monkeypatch):
    """torch-fidelity's ``kid_features_to_metric`` (the test is skipped when torch-fidelity is not installed)."""
    try:
        from torch_fidelity.metric_kid import kid_features_to_metric
        return kid_features_to_metric
    except ImportError:
        pass
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch-fidelity is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [str(root)]
    monkeypatch.setitem(sys.modules, "torch_fidelity", package)
    utils = types.ModuleType("torch_fidelity.utils")
    for name in ("create_feature_extractor", "extract_featuresdict_from_input_id_cached", "resolve_feature_extractor",
                 "resolve_feature_layer_for_metric"):
        setattr(utils, name, None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.utils", utils)
    for name in ("defaults", "deprecations", "helpers", "metric_kid"):
        sub = importlib.util.spec_from_file_location(f"torch_fidelity.{name}", root / f"{name}.py")
        module = importlib.util.module_from_spec(sub)
        monkeypatch.setitem(sys.modules, f"torch_fidelity.{name}", module)
        sub.loader.exec_module(module)
    return sys.modules["torch_fidelity.metric_kid"].kid_features_to_metric
