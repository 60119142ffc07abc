"""The feature classifier: a clean-image CNN for any (C, H, W) and K whose penultimate features give FID and
whose softmax gives IS on that data ("FID (fashion-mnist-classifier features)").

Architecture (``FeatureClassifier``), scaled to the image size: L stages of [conv3×3-SiLU, conv3×3-SiLU,
max-pool 2×2], halving the smaller side until it is at most 3 (8×8: 2 stages to 2×2; 28×28: 3 stages to 3×3;
32×32: 4 stages to 2×2), widths W, 2W, 4W, 4W, …; then flatten → Linear → SiLU (the D penultimate features) →
dropout → Linear (K logits). The shipped digits network is the instance (1, 8×8, K = 10, W = 32, D = 64).

Its training objective lives with the trainer (``cfgdiff.training.features``); ``ClassifierFeatures`` wraps a
trained one as a FID/IS feature extractor (``cfgdiff.evaluation.features``).

``features.safetensors`` holds the weights and, under the metadata key ``cfgdiff_features``, a JSON record:
the network config, the data's name and spec, the held-out accuracy, the training recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FEATURES_FILE = "features.safetensors"
METADATA_KEY = "cfgdiff_features"  # safetensors metadata entry holding a feature network's JSON record


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


def stage_count(image_size: tuple[int, int]) -> int:
    """Max-pool stages that bring the smaller image side down to at most 3 (at least 1)."""
    side, stages = min(image_size), 0
    while side > 3:
        side //= 2
        stages += 1
    return max(stages, 1)


class FeatureClassifier(nn.Module):
    """CNN classifier for [N, C, H, W] images in [-1, 1]; ``features(x)`` [N, D], ``forward(x)`` [N, K] logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 64,
                 dropout: float = 0.2, image_size: tuple[int, int] | list[int] = (8, 8)) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or width < 1 or feature_dim < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"bad classifier config: in_channels {in_channels}, num_classes {num_classes}, "
                             f"width {width}, feature_dim {feature_dim}, dropout {dropout}")
        h, w = (int(image_size[0]), int(image_size[1]))
        self.in_channels, self.num_classes, self.width, self.feature_dim = in_channels, num_classes, width, feature_dim
        self.dropout_p, self.image_size = dropout, (h, w)
        layers: list[nn.Module] = []
        c_in = in_channels
        for stage in range(stage_count((h, w))):
            c_out = width * 2 ** min(stage, 2)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2)]
            c_in, h, w = c_out, h // 2, w // 2
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * h * w, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "width": self.width,
                "feature_dim": self.feature_dim, "dropout": self.dropout_p, "image_size": list(self.image_size)}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, D] penultimate features (after SiLU)."""
        return F.silu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, K] logits."""
        return self.head(self.dropout(self.features(x)))


def default_classifier_config(data_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The preset for images [C, H, W]: W = 32, D = 64 up to 16 pixels a side, D = 128 above; dropout 0.2."""
    if len(data_shape) != 3:
        raise FeatureError(f"a feature classifier needs images [C, H, W], got data of shape {tuple(data_shape)}")
    c, h, w = data_shape
    return {"in_channels": int(c), "num_classes": int(num_classes), "width": 32,
            "feature_dim": 64 if min(h, w) <= 16 else 128, "dropout": 0.2, "image_size": [int(h), int(w)]}


@torch.no_grad()
def classifier_accuracy(net: nn.Module, dataset: Any, *, batch_size: int = 1000,
                        device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``net`` on a ``cfgdiff.data.Dataset`` split (converted in batches)."""
    was_training = net.training
    net.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        x = dataset.to_x(torch.as_tensor(dataset.stored[start:start + batch_size])).to(device)
        labels = torch.as_tensor(dataset.labels[start:start + batch_size]).to(device)
        correct += int((net(x).argmax(1) == labels).sum())
    net.train(was_training)
    return correct / max(len(dataset), 1)


def save_feature_classifier(net: FeatureClassifier, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Weights as safetensors; ``{"config": ..., **metadata}`` as JSON under the metadata key ``cfgdiff_features``.

    ``metadata`` should name the data (``data_name``, e.g. "fashion-mnist") and give ``test_accuracy``."""
    from safetensors.torch import save_file

    meta = {"config": net.config(), **metadata}
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)


def read_feature_record(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON record of a feature-network file (empty if none); ``FeatureError`` if it is not safetensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
    except Exception as err:  # safetensors raises its own error types for a foreign or truncated file
        raise FeatureError(f"{path} is not a cfgdiff feature-network file ({err})") from None


def load_feature_classifier(path: str | os.PathLike, *, name: str | None = None,
                            device: torch.device | str = "cpu") -> ClassifierFeatures:
    """A trained feature classifier from a ``train-features`` run directory (its ``features.safetensors``) or
    from the file itself. The extractor is named "{data_name}-classifier" from the file's record."""
    from safetensors.torch import load_file

    path = Path(path)
    file = path / FEATURES_FILE if path.is_dir() else path
    if not file.is_file():
        raise FeatureError(f"no feature network at {file} (train one with: cfgdiff train-features --data DATA "
                           f"--run-dir {path})")
    record = read_feature_record(file)
    config = dict(record.get("config", {}))
    config.setdefault("image_size", [8, 8])  # records written before image_size was stored are 8×8 digits
    try:
        net = FeatureClassifier(**config)
        net.load_state_dict(load_file(str(file)))
    except (TypeError, RuntimeError, ValueError) as err:
        raise FeatureError(f"{file}: weights do not fit the recorded feature-classifier config ({err})") from None
    data_name = name or str(record.get("data_name") or "data")
    return ClassifierFeatures(net, f"{data_name}-classifier", record, device=device)
