"""Feature networks for FID and IS: the shipped digits classifier, and Inception-v3 when the user has its weights.

A *feature extractor* maps images x in [-1, 1] ([N, C, H, W]) to ``(features [N, D], probs [N, K])``:
features for the Fréchet distance, class probabilities p(y | x) for the Inception Score. Every extractor has a
``name`` used in every printed metric ("FID (digits-classifier features)") and a ``cache_key`` that identifies
its weights, so cached reference statistics are never reused across different networks.

* ``DigitsClassifier``: a small CNN trained on the fixed ``digits`` training split by
  ``scripts/train_digits_classifier.py``; its weights ship as ``assets/digits_classifier.safetensors`` with the
  held-out test accuracy in the file's metadata. Penultimate activations (64-D) for FID, softmax for IS.
* ``InceptionFeatures``: the standard FID Inception-v3 (2048-D pool features, 1008-way logits), network
  definition from the optional ``torch-fidelity`` package (``pip install 'cfgdiff[inception]'``) and weights
  from a file the user supplies (e.g. ``weights-inception-2015-12-05-6726825d.pth``); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import types
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

DIGITS_CLASSIFIER_ASSET = "digits_classifier.safetensors"
METADATA_KEY = "cfgdiff_features"


class FeatureExtractor(Protocol):
    """x [N, C, H, W] in [-1, 1] -> (features [N, D] float64-ready, probs [N, K]); one batch at a time."""

    name: str  # how the metrics are named when printed: f"FID ({name} features)"
    cache_key: str  # identifies the weights (for cached reference statistics)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class FeatureError(ValueError):
    """A feature network that cannot be used as asked (missing weights file, missing optional package)."""


# -- the digits classifier -------------------------------------------------------------------------------


class DigitsClassifierNet(nn.Module):
    """CNN for 1×8×8 digits: [conv3-SiLU]×2 → 4×4 → [conv3-SiLU]×2 → 2×2 → Linear(256→D)-SiLU → Linear(D→K).

    ``features(x)`` is the D-dim penultimate activation (after SiLU), ``forward(x)`` the K logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 64,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.width, self.feature_dim = in_channels, num_classes, width, feature_dim
        self.dropout_p = dropout
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2),  # 8×8 -> 4×4
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2),  # 4×4 -> 2×2
        )
        self.fc = nn.Linear(2 * width * 4, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "width": self.width,
                "feature_dim": self.feature_dim, "dropout": self.dropout_p}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, 8, 8] -> [N, D] penultimate features."""
        h = self.conv(x).flatten(1)  # [N, 2W·4]
        return F.silu(self.fc(h))  # [N, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, 8, 8] -> [N, K] logits."""
        return self.head(self.dropout(self.features(x)))


class DigitsClassifier:
    """The digits feature extractor: (penultimate features, softmax) of a trained ``DigitsClassifierNet``."""

    name = "digits-classifier"

    def __init__(self, net: DigitsClassifierNet, metadata: dict[str, Any] | None = None) -> None:
        self.net = net.eval().requires_grad_(False)
        self.metadata = dict(metadata or {})
        digest = hashlib.sha256()
        for key, value in sorted(net.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        self.cache_key = f"digits-classifier-{digest.hexdigest()[:12]}"

    @property
    def test_accuracy(self) -> float | None:
        """Held-out accuracy on ``load_digits("test")`` recorded when the weights were trained."""
        value = self.metadata.get("test_accuracy")
        return None if value is None else float(value)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(torch.float32).clamp(-1.0, 1.0)  # samples may overshoot the data range slightly
        feats = self.net.features(x)
        probs = torch.softmax(self.net.head(feats), dim=1)
        return feats, probs


def save_digits_classifier(net: DigitsClassifierNet, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Weights as safetensors; metadata (config, accuracy, training recipe) as JSON under ``cfgdiff_features``."""
    from safetensors.torch import save_file

    meta = {"config": net.config(), **metadata}
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


def load_digits_classifier(path: str | os.PathLike | None = None) -> DigitsClassifier:
    """The shipped digits classifier (``cfgdiff/assets/digits_classifier.safetensors``) or one at ``path``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path is None:
        ref = resources.files("cfgdiff") / "assets" / DIGITS_CLASSIFIER_ASSET
        with resources.as_file(ref) as p:
            return load_digits_classifier(p)
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"no digits classifier weights at {path} (train them with "
                           "scripts/train_digits_classifier.py)")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
    net = DigitsClassifierNet(**meta.get("config", {}))
    net.load_state_dict(load_file(str(path)))
    return DigitsClassifier(net, meta)


# -- Inception-v3 (optional) ------------------------------------------------------------------------------


INCEPTION_HINT = ("Inception-v3 features need the optional package torch-fidelity (pip install 'cfgdiff[inception]') "
                  "and the standard FID weights file passed as --inception-weights PATH "
                  "(weights-inception-2015-12-05-6726825d.pth; nothing is downloaded)")


def _fidelity_inception_class() -> type:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-compatible FID network definition).

    torch-fidelity's package ``__init__`` also imports its CLIP/VGG extractors, which need torchvision; the
    Inception module itself needs only torch. If the package import fails for that reason, the module is
    imported under a bare package stub so that torchvision is not required.
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None or not spec.submodule_search_locations:
            raise FeatureError(f"cannot import torch-fidelity ({err}): {INCEPTION_HINT}") from None
        saved = sys.modules.get("torch_fidelity")
        stub = types.ModuleType("torch_fidelity")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["torch_fidelity"] = stub
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err2:
            raise FeatureError(f"cannot import torch-fidelity's Inception-v3 ({err2}): {INCEPTION_HINT}") from None
        finally:
            if saved is not None:
                sys.modules["torch_fidelity"] = saved
    return FeatureExtractorInceptionV3


class InceptionFeatures:
    """FID Inception-v3 (torch-fidelity's definition): 2048-D pool3 features and softmax over its 1008 logits.

    Input x in [-1, 1] with 1 or 3 channels (1 is repeated to 3) is quantised to uint8 [0, 255], which is what
    torch-fidelity's extractor takes; it resizes to 299×299 internally (TF1-compatible bilinear). The weights
    file is read with ``torch.load`` by torch-fidelity: pass only a file you trust.
    """

    name = "Inception-v3"

    def __init__(self, weights_path: str | os.PathLike) -> None:
        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise FeatureError(f"no Inception weights at {weights_path}: {INCEPTION_HINT}")
        network_cls = _fidelity_inception_class()
        try:
            self.net = network_cls("inception-v3-compat", ["2048", "logits_unbiased"],
                                   feature_extractor_weights_path=str(weights_path)).eval()
        except (RuntimeError, OSError, KeyError, ValueError) as err:
            raise FeatureError(f"{weights_path} is not a usable FID Inception-v3 state dict ({err})") from None
        digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()[:12]
        self.cache_key = f"inception-v3-{digest}"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise FeatureError(f"Inception-v3 features need images [N, 1 or 3, H, W], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        pixels = ((x.to(torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)  # [N, 3, H, W]
        feats, logits = self.net(pixels)  # [N, 2048], [N, 1008]
        return feats.to(torch.float32), torch.softmax(logits.to(torch.float64), dim=1).to(torch.float32)


def feature_extractor_for(data: str, inception_weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """Inception-v3 when weights are given, else the data set's own classifier (digits only)."""
    if inception_weights is not None:
        return InceptionFeatures(inception_weights)
    if data == "digits":
        return load_digits_classifier()
    raise FeatureError(f"no feature network for data set {data!r}: {INCEPTION_HINT}")
