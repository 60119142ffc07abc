"""Data sets: built-in ones and the user's own files, one ``load_dataset`` for all.

``load_dataset(spec, split)`` takes a ``DataSpec`` or a string (a built-in name or a path) and returns a
``Dataset`` (uint8 images converted per batch, see ``cfgdiff.data.dataset``). Nothing is ever downloaded.

Built-in (``builtin.py``): ``digits`` (scikit-learn's 8×8 digits, 10 classes) and ``gmm2d`` (draws of the exact
three-Gaussian testbed).
"""

from __future__ import annotations

from cfgdiff.data.builtin import BUILTIN, load_digits, load_gmm2d
from cfgdiff.data.dataset import SPLITS, DataError, Dataset, DataSpec

DATASETS = BUILTIN  # built-in names -> loaders (other data sets are paths)

__all__ = ["DATASETS", "SPLITS", "DataError", "DataSpec", "Dataset", "load_dataset", "load_digits", "load_gmm2d"]


def load_dataset(spec: DataSpec | str, split: str = "train") -> Dataset:
    """One split ("train", "test" or "all") of the data set ``spec`` names."""
    spec = spec if isinstance(spec, DataSpec) else DataSpec(source=str(spec))
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if spec.source in BUILTIN:
        return BUILTIN[spec.source](split)
    raise DataError(f"unknown data set {spec.source!r}; choose from {', '.join(sorted(BUILTIN))}")
