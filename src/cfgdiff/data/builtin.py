"""Built-in data sets: nothing to download, always there.

* ``digits``: scikit-learn's bundled handwritten digits (1797 images, 1×8×8, 10 classes), pixel values 0..16
  stored as uint8 with ``pixel_max`` 16 (x = v/8 - 1 ∈ [-1, 1]); a fixed stratified split (seed 0, 20% test)
  gives ``train`` and ``test``.
* ``gmm2d``: draws from ``GaussianMixture.three_gaussians()`` (the exact testbed), a fixed seed per split.
"""

from __future__ import annotations

import numpy as np
import torch

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.data.cache import content_sha256
from cfgdiff.data.dataset import SPLITS, DataError, Dataset


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")


def load_digits(split: str = "train") -> Dataset:
    """scikit-learn's 8×8 digits: stored uint8 [N, 1, 8, 8] in 0..16, x = v/8 - 1 ∈ [-1, 1]."""
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split)
    bunch = _sk_load_digits()
    images = bunch.images.astype(np.uint8)  # [N, 8, 8], 0..16
    labels = bunch.target.astype(np.int64)
    if split != "all":
        idx_train, idx_test = train_test_split(
            np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
        )
        idx = np.sort(idx_train if split == "train" else idx_test)
        images, labels = images[idx], labels[idx]
    stored = torch.from_numpy(np.ascontiguousarray(images))[:, None]  # [N, 1, 8, 8]
    source = {"spec": {"source": "digits"}, "format": "builtin", "split": split, "count": int(len(labels)),
              "shape": [1, 8, 8], "num_classes": 10, "total": int(len(bunch.target)),
              "test_split": {"kind": "held-out", "fraction": 0.2, "seed": 0,
                             "method": "sklearn.model_selection.train_test_split(stratify=labels)"},
              "content_sha256": content_sha256(bunch.images.astype(np.uint8)[:, None], bunch.target)}
    return Dataset("digits", stored, torch.from_numpy(labels), 10, tuple(str(d) for d in range(10)), 1.0,
                   pixel_max=16, source=source)


def load_gmm2d(split: str = "train", n: int = 30000) -> Dataset:
    """Samples of the three-Gaussian testbed: float32 [N, 2] with their component labels."""
    _check_split(split)
    mixture = GaussianMixture.three_gaussians()
    generator = torch.Generator().manual_seed({"train": 0, "test": 1, "all": 2}[split])
    labels = mixture.sample_labels(n, generator)
    x = mixture.sample(labels, generator).to(torch.float32)
    source = {"spec": {"source": "gmm2d"}, "format": "builtin", "split": split, "count": n, "shape": [2],
              "num_classes": mixture.num_classes, "seed": {"train": 0, "test": 1, "all": 2}[split]}
    # means at radius 0.6 with std 0.22: |x| < 2 holds with overwhelming probability (> 6 std)
    return Dataset("gmm2d", x, labels, mixture.num_classes, ("a", "b", "c"), 2.0, source=source)


BUILTIN = {"digits": load_digits, "gmm2d": load_gmm2d}
