"""Data sets, as in-memory tensors scaled for diffusion.

* ``digits``: scikit-learn's bundled handwritten digits (1797 images, 1×8×8, 10 classes), pixel values
  0..16 mapped to [-1, 1]; a fixed stratified split (seed 0, 20% test) gives ``train`` and ``test``.
* ``gmm2d``: draws from ``GaussianMixture.three_gaussians()`` (the exact testbed), a fixed seed per split.

Nothing is downloaded. ``load_dataset(name, split)`` is the one entry point; ``DATASETS`` lists the names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cfgdiff.toy import GaussianMixture

SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class Dataset:
    """x: [N, *data_shape] float32 (images in [-1, 1]); labels: [N] int64 in [0, num_classes)."""

    name: str
    x: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    x_bound: float  # |x| <= x_bound on the data: the sampler's default clip of x̂

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")


def load_digits(split: str = "train") -> Dataset:
    """scikit-learn's 8×8 digits as [N, 1, 8, 8] in [-1, 1] (x = pixel/8 - 1)."""
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split)
    bunch = _sk_load_digits()
    images = bunch.images.astype(np.float32) / 8.0 - 1.0  # [N, 8, 8], 0..16 -> [-1, 1]
    labels = bunch.target.astype(np.int64)
    if split != "all":
        idx_train, idx_test = train_test_split(
            np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
        )
        idx = np.sort(idx_train if split == "train" else idx_test)
        images, labels = images[idx], labels[idx]
    x = torch.from_numpy(images)[:, None]  # [N, 1, 8, 8]
    return Dataset("digits", x, torch.from_numpy(labels), 10, tuple(str(d) for d in range(10)), 1.0)


def load_gmm2d(split: str = "train", n: int = 30000) -> Dataset:
    """Samples of the three-Gaussian testbed: [N, 2] float32 with their component labels."""
    _check_split(split)
    mixture = GaussianMixture.three_gaussians()
    generator = torch.Generator().manual_seed({"train": 0, "test": 1, "all": 2}[split])
    labels = mixture.sample_labels(n, generator)
    x = mixture.sample(labels, generator).to(torch.float32)
    # means at radius 0.6 with std 0.22: |x| < 2 holds with overwhelming probability (> 6 std)
    return Dataset("gmm2d", x, labels, mixture.num_classes, ("a", "b", "c"), 2.0)


DATASETS = {"digits": load_digits, "gmm2d": load_gmm2d}


def load_dataset(name: str, split: str = "train") -> Dataset:
    """Load a data set by name (see ``DATASETS``)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(sorted(DATASETS))}") from None
    return loader(split)
