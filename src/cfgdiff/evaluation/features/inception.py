"""Inception-v3 features for FID and IS, when the user has the standard weights file (nothing is downloaded).

The network definition comes from the optional ``torch-fidelity`` package (``pip install 'cfgdiff[inception]'``);
the weights from a file the user supplies (e.g. ``weights-inception-2015-12-05-6726825d.pth``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

from cfgdiff.evaluation.features.base import FeatureError

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



