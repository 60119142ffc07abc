"""Memorisation: the share of samples that are near-copies of a training image.

A sample x is a *near-copy* when its nearest-neighbour distance to the training set,

    d(x) = min_i ||x - x_i^train||_2   (pixels in model units, x ∈ [-1, 1]),

lies below the threshold τ that 99 % of held-out test images exceed: τ = d_(k), the k-th smallest of the test
images' distances d(x^test) with k = ⌈0.01 M⌉ (M test images), and near-copy ⇔ d(x) < τ. So fewer than 1 % of
the test images count as near-copies by construction, a fresh held-out image does with probability ≈ 1 %, and
a training image (d = 0) always does when τ > 0. A model that generalises like held-out data scores ≈ 1 %; a
model that copies its training set scores up to 100 %.

Why pixel space: a near-copy is a pixel-level statement. In the penultimate features of a classifier trained to
tell the classes apart, different images of one class lie close together by design, so a feature-space nearest
neighbour measures "typical of its class", not "copied". The scale of raw pixel distances is no problem
because τ is calibrated on held-out images of the same data. (For large photographs, where small shifts or crops
defeat L2, a copy-detection descriptor would be the better space; the sets cfgdiff trains on are small images.)

Distances are computed exactly and in chunks: ||x - y||² = ||x||² + ||y||² - 2 x·y by float32 matrix products
over chunks of the training set (uint8 rows converted per chunk), then the distance to the neighbour found is
recomputed in float64 from the two images, so an exact copy gives exactly 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfgdiff.evaluation.metrics.reference import data_key, default_cache_dir

NEAR_COPY_QUANTILE = 0.01  # τ: the distance that 99 % of held-out test images exceed


def nearest_neighbour_distances(
    queries: torch.Tensor,
    reference: torch.Tensor,
    *,
    to_x: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reference_chunk: int = 8192,
    query_chunk: int = 2048,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance [Q] float64, index [Q] int64) of each query's nearest row of ``reference`` in L2.

    ``queries`` [Q, ...] are in model units; ``reference`` [M, ...] rows are turned into model units by
    ``to_x`` (e.g. ``Dataset.to_x`` for uint8 images; identity if None), ``reference_chunk`` rows at a time.
    """
    convert = to_x if to_x is not None else (lambda rows: rows.to(torch.float32))
    q_all = queries.reshape(queries.shape[0], -1).to(torch.float32)
    count = int(reference.shape[0])
    if count == 0:
        raise ValueError("the reference set is empty")
    best_d2 = torch.full((q_all.shape[0],), math.inf, dtype=torch.float32)
    best_idx = torch.zeros(q_all.shape[0], dtype=torch.int64)
    for r_start in range(0, count, reference_chunk):
        rows = convert(torch.as_tensor(reference[r_start:r_start + reference_chunk]))
        rows = rows.reshape(rows.shape[0], -1).to(device=device, dtype=torch.float32)  # [m, P]
        if rows.shape[1] != q_all.shape[1]:
            raise ValueError(f"queries have {q_all.shape[1]} values per row, the reference {rows.shape[1]}")
        r_norm = (rows * rows).sum(1)  # [m]
        for q_start in range(0, q_all.shape[0], query_chunk):
            q = q_all[q_start:q_start + query_chunk].to(device)  # [q, P]
            d2 = (q * q).sum(1, keepdim=True) + r_norm[None, :] - 2.0 * (q @ rows.T)  # [q, m]
            value, index = d2.min(dim=1)
            value, index = value.cpu(), index.cpu()
            better = value < best_d2[q_start:q_start + q.shape[0]]
            best_d2[q_start:q_start + q.shape[0]] = torch.where(better, value, best_d2[q_start:q_start + q.shape[0]])
            best_idx[q_start:q_start + q.shape[0]] = torch.where(better, index + r_start,
                                                                 best_idx[q_start:q_start + q.shape[0]])
    neighbours = convert(torch.as_tensor(reference[best_idx])).reshape(q_all.shape[0], -1).to(torch.float64)
    exact = (queries.reshape(queries.shape[0], -1).to(torch.float64) - neighbours).norm(dim=1)
    return exact, best_idx


def near_copy_threshold(test_distances: np.ndarray | torch.Tensor, quantile: float = NEAR_COPY_QUANTILE) -> float:
    """τ = d_(k), the k-th smallest distance, k = ⌈quantile · M⌉: a fraction 1 - quantile of them are ≥ τ."""
    d = np.sort(np.asarray(test_distances, np.float64).ravel())
    if d.size == 0:
        raise ValueError("no held-out distances to calibrate the near-copy threshold")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    k = max(1, math.ceil(quantile * d.size))
    return float(d[k - 1])


@dataclass
class NearCopyDetector:
    """Counts the samples whose nearest training image is closer than ``threshold`` (see the module docstring)."""

    train_stored: Any  # [M, ...] training rows as stored (uint8 images)
    to_x: Callable[[torch.Tensor], torch.Tensor]  # stored rows -> model units
    threshold: float  # τ
    quantile: float  # τ's calibration quantile of held-out distances
    test_count: int  # held-out images τ was calibrated on
    test_share: float  # share of those held-out images with d < τ (< quantile by construction)
    device: torch.device | str = "cpu"

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest-training-image distance of each sample [N] (float64)."""
        return nearest_neighbour_distances(x, self.train_stored, to_x=self.to_x, device=self.device)[0]

    def share(self, x: torch.Tensor) -> float:
        """Share of the samples x [N, ...] that are near-copies: mean(d(x) < τ)."""
        return float((self.distances(x) < self.threshold).double().mean())

    def meta(self) -> dict[str, Any]:
        return {"memorisation_threshold": self.threshold, "memorisation_quantile": self.quantile,
                "memorisation_test_count": self.test_count, "memorisation_test_share": self.test_share,
                "memorisation_space": "pixels (L2 in model units, x in [-1, 1])"}


def near_copy_detector(train: Any, test: Any, *, quantile: float = NEAR_COPY_QUANTILE,
                       cache_dir: str | os.PathLike | None = None,
                       device: torch.device | str = "cpu") -> NearCopyDetector:
    """Calibrate τ on the held-out ``test`` split against the ``train`` split (two ``cfgdiff.data.Dataset``s of
    images); the test images' distances are cached under ``cache_dir`` (as for reference statistics)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = data_key(train.name, {"train": train.source, "test": test.source})
    path = cache / f"nndist-{key}.npz"
    distances = None
    if path.is_file():
        try:
            with np.load(path) as f:
                distances = f["distances"]
        except (OSError, KeyError, ValueError):
            distances = None
        if distances is not None and distances.shape != (len(test),):
            distances = None
    if distances is None:
        chunks = [nearest_neighbour_distances(test.to_x(torch.as_tensor(test.stored[s:s + 2048])), train.stored,
                                              to_x=train.to_x, device=device)[0]
                  for s in range(0, len(test), 2048)]
        distances = torch.cat(chunks).numpy()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, distances=distances)
            os.replace(tmp, path)
        except OSError:
            pass
    threshold = near_copy_threshold(distances, quantile)
    return NearCopyDetector(train.stored, train.to_x, threshold, quantile, int(distances.size),
                            float((distances < threshold).mean()), device)
