"""What every feature network for FID and IS provides, and the wrapper that turns a classifier into one.

A *feature extractor* maps images x in [-1, 1] ([N, C, H, W]) to ``(features [N, D], probs [N, K])``:
features for the Fréchet distance, class probabilities p(y | x) for the Inception Score. Every extractor has a
``name`` used in every printed metric ("FID (digits-classifier features)") and a ``cache_key`` that identifies
its weights, so cached reference statistics are never reused across different networks.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import torch
from torch import nn

METADATA_KEY = "cfgdiff_features"  # safetensors metadata entry holding a feature network's JSON record


class FeatureExtractor(Protocol):
    """x [N, C, H, W] in [-1, 1] -> (features [N, D] float64-ready, probs [N, K]); one batch at a time."""

    name: str  # how the metrics are named when printed: f"FID ({name} features)"
    cache_key: str  # identifies the weights (for cached reference statistics)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class FeatureError(ValueError):
    """A feature network that cannot be used as asked (missing weights file, missing optional package)."""


def weights_digest(net: nn.Module) -> str:
    """12 hex digits of SHA-256 over the state dict (names and values): identifies trained weights."""
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class ClassifierFeatures:
    """A clean-image classifier as a feature extractor: penultimate features ``net.features(x)`` for FID and
    softmax of ``net.head`` for IS. ``name`` is "{data}-classifier" (the data it was trained on)."""

    def __init__(self, net: nn.Module, name: str, metadata: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.net = net.to(device).eval().requires_grad_(False)
        self.name = name
        self.metadata = dict(metadata or {})
        self.device = torch.device(device)
        self.cache_key = f"{name}-{weights_digest(net)}"

    @property
    def test_accuracy(self) -> float | None:
        """Held-out accuracy recorded when the weights were trained."""
        value = self.metadata.get("test_accuracy")
        return None if value is None else float(value)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, torch.float32).clamp(-1.0, 1.0)  # samples may overshoot the data range slightly
        feats = self.net.features(x)
        probs = torch.softmax(self.net.head(feats), dim=1)
        return feats.cpu(), probs.cpu()
