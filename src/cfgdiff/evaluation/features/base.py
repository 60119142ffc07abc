"""What every feature network for FID and IS provides, and the wrapper that turns a classifier into one.

A *feature extractor* maps images x in [-1, 1] ([N, C, H, W]) to ``(features [N, D], probs [N, K])``:
features for the Fréchet distance, class probabilities p(y | x) for the Inception Score. Every extractor has a
``name`` used in every printed metric ("FID (digits-classifier features)") and a ``cache_key`` that identifies
its weights, so cached reference statistics are never reused across different networks.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cfgdiff.models.feature_classifier import METADATA_KEY, ClassifierFeatures, FeatureError, weights_digest

__all__ = ["METADATA_KEY", "ClassifierFeatures", "FeatureError", "FeatureExtractor", "weights_digest"]

class FeatureExtractor(Protocol):
    """x [N, C, H, W] in [-1, 1] -> (features [N, D] float64-ready, probs [N, K]); one batch at a time."""

    name: str  # how the metrics are named when printed: f"FID ({name} features)"
    cache_key: str  # identifies the weights (for cached reference statistics)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
