"""The held-out split of a source that has no test split of its own: stratified, seeded, stable.

For N examples and a fraction f, round(f · N) examples (at least one where any class has two) are held out,
shared among the classes in proportion to their sizes (largest remainder, ties to the lower class index), never
the last example of a class, so every class keeps training data. Within class k, the held-out examples are the
first n_k of a permutation drawn from ``numpy.random.default_rng(seed)`` (classes in index order, one
permutation each). The split depends only on the labels (in order), f and the seed: every call, on every
machine, gives the same indices, and train ∪ test is every example exactly once.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


def heldout_counts(class_sizes: np.ndarray, fraction: float) -> np.ndarray:
    """How many examples of each class are held out (see the module docstring)."""
    sizes = np.asarray(class_sizes, dtype=np.int64)
    caps = np.maximum(sizes - 1, 0)  # keep one example of each class for training
    total = min(int(caps.sum()), max(1, math.floor(fraction * sizes.sum() + 0.5)))
    ideal = fraction * sizes
    counts = np.minimum(np.floor(ideal).astype(np.int64), caps)
    remainder = ideal - np.floor(ideal)
    # largest remainder first; ties to the lower class index (a stable sort of -remainder)
    order = np.argsort(-remainder, kind="stable")
    while counts.sum() < total:
        progressed = False
        for k in order:
            if counts.sum() >= total:
                break
            if counts[k] < caps[k]:
                counts[k] += 1
                progressed = True
        if not progressed:
            break
    return counts


def heldout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), each sorted ascending; see the module docstring."""
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    sizes = np.array([(labels == k).sum() for k in classes], dtype=np.int64)
    counts = heldout_counts(sizes, fraction)
    rng = np.random.default_rng(seed)
    test = []
    for k, n_test in zip(classes, counts, strict=True):
        members = np.flatnonzero(labels == k)
        test.append(members[rng.permutation(len(members))[:n_test]])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def indices_sha256(indices: np.ndarray) -> str:
    """A fingerprint of an index set (int64 little-endian bytes), recorded with the split."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()
