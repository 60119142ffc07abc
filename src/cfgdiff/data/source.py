"""From what a format reader found (``RawData``: every row of a source) to one split as a ``Dataset``.

Shared by every file format, so the checks, the split, the memory policy and the provenance are the same for
all of them:

* class names: the user's (``DataSpec.class_names``), else the format's own, else "0", "1", ...; labels must lie
  in [0, K) and every class must have training images (``DataError`` naming the label file otherwise);
* split: the source's own test split where it has one, else the stratified, seeded held-out split
  (``cfgdiff.data.split``) of ``DataSpec.test_fraction`` (default 0.1) with ``DataSpec.split_seed``;
* memory: decoded sources live in the cache as a memory map; a split whose bytes exceed the memory budget
  (``DEFAULT_MEMORY_BUDGET`` = 2 GiB, ``$CFGDIFF_DATA_MEMORY_BUDGET``, or ``load_dataset(memory_budget=)``) stays
  memory-mapped (``Dataset.in_memory`` False, read-only) and training streams it; a smaller one is read into
  memory;
* provenance: ``Dataset.source`` (see ``build_dataset``).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfgdiff.data.cache import content_sha256, heldout_rows
from cfgdiff.data.dataset import DataError, Dataset, DataSpec
from cfgdiff.data.images import transform_array
from cfgdiff.data.split import heldout_split, indices_sha256

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes: a split larger than this stays memory-mapped (training streams it)
MEMORY_BUDGET_ENV = "CFGDIFF_DATA_MEMORY_BUDGET"  # bytes, or with a K/M/G suffix (powers of 1024)


@dataclass
class RawData:
    """Every example a source holds, before the split: what a format reader returns."""

    name: str  # display name: the folder's or file's name, "cifar10", ...
    format: str  # the format's name (a key of cfgdiff.data.FORMATS)
    path: str  # the resolved path read
    images: np.ndarray  # uint8 [N, C, H, W], the source's own test rows last; possibly a read-only memory map
    labels: np.ndarray  # int64 [N]
    label_file: str  # where the (training) labels came from, named in label errors
    test_label_file: str | None = None  # where the test rows' labels came from, if elsewhere
    num_test: int | None = None  # the last num_test rows are the source's test split; None: it has none
    class_names: tuple[str, ...] | None = None  # the names the format carries, if it carries any
    info: dict[str, Any] = field(default_factory=dict)  # format-specific provenance (files, skipped files, ...)
    content_sha256: str | None = None  # known already when the rows come from the cache
    cache_path: Path | None = None  # the cache entry holding ``images`` (for held-out split files)
    transformed: bool = False  # True when image_size / channels were applied while decoding


def memory_budget(value: int | None = None) -> int:
    """``value``, else ``$CFGDIFF_DATA_MEMORY_BUDGET`` (e.g. ``500M``, ``4G``), else ``DEFAULT_MEMORY_BUDGET``."""
    if value is not None:
        return int(value)
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_MEMORY_BUDGET
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", text, flags=re.IGNORECASE)
    if match is None:
        raise DataError(f"${MEMORY_BUDGET_ENV}={text!r} is not a byte count (e.g. 2147483648, 512M, 2G)")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(match.group(1)) * 1024**power


def _class_names(raw: RawData, spec: DataSpec, n_train: int) -> tuple[str, ...]:
    """The user's names, else the format's, else "0" … "K-1" with K = 1 + the largest training label."""
    if spec.class_names is not None:
        if raw.class_names is not None and len(raw.class_names) != len(spec.class_names):
            raise DataError(f"{len(spec.class_names)} class names given, but {raw.path} names "
                            f"{len(raw.class_names)} classes")
        return tuple(spec.class_names)
    if raw.class_names is not None:
        return tuple(raw.class_names)
    top = int(raw.labels[:n_train].max()) if n_train else -1
    return tuple(str(k) for k in range(top + 1))


def _check_labels(raw: RawData, names: tuple[str, ...], names_from: str, n_train: int) -> None:
    labels = raw.labels
    k = len(names)
    if len(labels) == 0 or n_train == 0:
        raise DataError(f"{raw.path}: no training images")
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    if bad.size:
        i = int(bad[0])
        in_test = raw.num_test is not None and i >= len(labels) - raw.num_test
        where = raw.test_label_file if in_test and raw.test_label_file else raw.label_file
        origin = {"spec": " (as many as the class names given)", "file": f" (named in {raw.path})",
                  "labels": " (1 + the largest training label)"}[names_from]
        row = i - (len(labels) - raw.num_test) if in_test else i
        raise DataError(f"{where}: label {int(labels[i])} of example {row} is out of range for {k} "
                        f"classes{origin}; labels must lie in [0, {k - 1}]")
    counts = np.bincount(labels[:n_train], minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        j = int(empty[0])
        raise DataError(f"{raw.label_file}: class {j} ({names[j]!r}) has no training images "
                        f"({empty.size} of {k} classes have none)")


def build_dataset(raw: RawData, spec: DataSpec, split: str, *, budget: int | None = None) -> Dataset:
    """One split of ``raw`` as a ``Dataset``.

    ``Dataset.source`` records: ``spec`` (the DataSpec as JSON), ``format``, ``path``, ``split``, ``count`` and
    ``shape`` (this split), ``total`` (rows in the source), ``num_classes``, ``class_names_from`` ("spec",
    "file" or "labels"), ``test_split`` (the source's own, or the held-out fraction, seed, counts and a hash of
    the held-out indices), ``content_sha256`` (``cfgdiff.data.cache.content_sha256`` of every row of the
    source), ``in_memory``, ``cache`` (the decoded-image cache entry, if any) and the format's own entries
    (files read, ``skipped_files``: non-image files skipped).
    """
    images = raw.images
    if not raw.transformed and (spec.image_size is not None or spec.channels is not None):
        images = transform_array(np.asarray(images), channels=spec.channels, image_size=spec.image_size)
        raw = replace(raw, images=images, content_sha256=None, cache_path=None)
    n = int(len(raw.labels))
    if images.shape[0] != n:
        raise DataError(f"{raw.path}: {images.shape[0]} images but {n} labels")
    has_test = raw.num_test is not None and raw.num_test > 0
    n_train_source = n - raw.num_test if has_test else n
    names = _class_names(raw, spec, n_train_source)
    names_from = "spec" if spec.class_names is not None else "file" if raw.class_names is not None else "labels"
    _check_labels(raw, names, names_from, n_train_source)
    digest = raw.content_sha256 or content_sha256(images, raw.labels)

    order: np.ndarray | None = None  # held-out split: train rows then test rows
    if has_test:
        n_test = int(raw.num_test)
        rows = {"train": slice(0, n - n_test), "test": slice(n - n_test, n), "all": slice(0, n)}[split]
        test_info: dict[str, Any] = {"kind": "source", "train": n - n_test, "test": n_test}
    else:
        train_idx, test_idx = heldout_split(raw.labels, spec.test_fraction, spec.split_seed)
        test_info = {"kind": "held-out", "fraction": spec.test_fraction, "seed": spec.split_seed,
                     "method": "stratified (cfgdiff.data.split)", "train": int(len(train_idx)),
                     "test": int(len(test_idx)), "test_indices_sha256": indices_sha256(test_idx)}
        if split == "test" and len(test_idx) == 0:
            raise DataError(f"{raw.path}: too few images for a held-out split (every class has a single image)")
        rows = {"train": train_idx, "test": test_idx, "all": slice(0, n)}[split]
        order = np.concatenate([train_idx, test_idx])
    labels = raw.labels[rows]
    count = int(len(labels))
    nbytes = count * int(np.prod(images.shape[1:]))
    mapped = isinstance(images, np.memmap)
    limit = memory_budget(budget)
    if mapped and nbytes > limit:  # stays on disk, read-only; training streams it
        if isinstance(rows, slice):
            stored_np = images[rows]
        elif raw.cache_path is not None:
            reordered = heldout_rows(raw.cache_path, images, order, f"{spec.test_fraction:g}-{spec.split_seed}")
            n_tr = len(order) - len(test_idx)
            stored_np = reordered[:n_tr] if split == "train" else reordered[n_tr:]
        else:
            stored_np = np.asarray(images[rows])
    elif isinstance(rows, slice):
        # a part of an array is copied, so the rest can be freed; a memory map is read into memory
        whole = rows == slice(0, n)
        stored_np = images if whole and not mapped else np.array(images[rows])
    else:
        stored_np = np.asarray(images[rows])  # fancy indexing copies
    in_memory = not isinstance(stored_np, np.memmap)
    if in_memory and not stored_np.flags.writeable:
        stored_np = stored_np.copy()
    with warnings.catch_warnings():  # a read-only memory map: torch warns that the tensor is not writable
        warnings.simplefilter("ignore", UserWarning)
        stored = torch.from_numpy(stored_np)
    source: dict[str, Any] = {
        "spec": spec.to_json(), "format": raw.format, "path": raw.path, "split": split, "count": count,
        "shape": list(images.shape[1:]), "total": n, "num_classes": len(names), "class_names_from": names_from,
        "test_split": test_info, "content_sha256": digest,
        "content_hash_of": "uint8 images [N, C, H, W] in C order, then int64 labels, all N rows of the source",
        "in_memory": in_memory, "cache": str(raw.cache_path) if raw.cache_path is not None else None,
        **raw.info,
    }
    channels = int(images.shape[1])
    hflip = spec.hflip if spec.hflip is not None else channels == 3
    return Dataset(raw.name, stored, torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)), len(names),
                   names, 1.0, pixel_max=255, hflip_default=bool(hflip), in_memory=in_memory, source=source)
