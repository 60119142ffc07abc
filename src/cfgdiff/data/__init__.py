"""Data sets: built-in ones and the user's own files, one ``load_dataset`` for all.

``load_dataset(spec, split)`` takes a ``DataSpec`` or a string (a built-in name or a path) and returns a
``Dataset`` (uint8 images converted per batch, see ``cfgdiff.data.dataset``). Nothing is ever downloaded.

Built-in (``builtin.py``): ``digits`` (scikit-learn's 8×8 digits, 10 classes) and ``gmm2d`` (draws of the exact
three-Gaussian testbed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cfgdiff.data.builtin import BUILTIN, load_digits, load_gmm2d
from cfgdiff.data.dataset import SPLITS, DataError, Dataset, DataSpec
from cfgdiff.data.idx import is_idx_directory, read_idx_split

DATASETS = BUILTIN  # built-in names -> loaders (other data sets are paths)

__all__ = ["DATASETS", "SPLITS", "DataError", "DataSpec", "Dataset", "load_dataset", "load_digits", "load_gmm2d"]


def load_dataset(spec: DataSpec | str, split: str = "train") -> Dataset:
    """One split ("train", "test" or "all") of the data set ``spec`` names."""
    spec = spec if isinstance(spec, DataSpec) else DataSpec(source=str(spec))
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if spec.source in BUILTIN:
        return BUILTIN[spec.source](split)
    path = Path(spec.source).expanduser()
    if not path.exists():
        raise DataError(f"{spec.source}: no such file or directory, and not a built-in data set "
                        f"({', '.join(sorted(BUILTIN))})")
    if is_idx_directory(path):
        return _load_idx(path, spec, split)
    raise DataError(f"{path}: no data set format recognised")


def _load_idx(path: Path, spec: DataSpec, split: str) -> Dataset:
    train = read_idx_split(path, "train")
    test = read_idx_split(path, "test")
    if split == "test" and test is None:
        raise DataError(f"{path}: no test split (t10k-*-idx*-ubyte)")
    parts = {"train": [train], "test": [test], "all": [train] + ([test] if test is not None else [])}[split]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    num_classes = int(train[1].max()) + 1
    names = tuple(spec.class_names) if spec.class_names else tuple(str(k) for k in range(num_classes))
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names given for {num_classes} classes in {path}")
    source = {"spec": spec.to_json(), "format": "idx", "path": str(path.resolve()), "split": split,
              "count": int(len(labels)), "shape": list(images.shape[1:])}
    return Dataset(path.name, torch.from_numpy(images), torch.from_numpy(labels), num_classes, names, 1.0,
                   pixel_max=255, source=source)
