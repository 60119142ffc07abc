"""The shipped digits feature classifier: ``FeatureClassifier`` on 1×8×8 digits, 10 classes, trained by
``scripts/train_digits_classifier.py`` on the fixed ``digits`` training split; its weights ship as
``cfgdiff/assets/digits_classifier.safetensors`` with the held-out test accuracy in the file's record.
Penultimate activations (64-D) give "FID (digits-classifier features)", the softmax "IS (digits classifier)".
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from cfgdiff.models.feature_classifier import (
    ClassifierFeatures,
    FeatureClassifier,
    FeatureError,
    load_feature_classifier,
    save_feature_classifier,
)

DIGITS_CLASSIFIER_ASSET = "digits_classifier.safetensors"
DIGITS_NAME = "digits"


class DigitsClassifierNet(FeatureClassifier):
    """``FeatureClassifier`` with the digits defaults: 1×8×8 images, 10 classes, W = 32, D = 64, dropout 0.2."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 64,
                 dropout: float = 0.2, image_size: tuple[int, int] | list[int] = (8, 8)) -> None:
        super().__init__(in_channels, num_classes, width, feature_dim, dropout, image_size)


DigitsClassifier = ClassifierFeatures  # the digits extractor is a ClassifierFeatures named "digits-classifier"


def save_digits_classifier(net: FeatureClassifier, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Weights and record (config, accuracy, recipe; ``data_name`` "digits") as a feature-network file."""
    save_feature_classifier(net, path, {"data_name": DIGITS_NAME, **metadata})


def load_digits_classifier(path: str | os.PathLike | None = None) -> ClassifierFeatures:
    """The shipped digits classifier (``cfgdiff/assets/digits_classifier.safetensors``) or one at ``path``."""
    if path is None:
        ref = resources.files("cfgdiff") / "assets" / DIGITS_CLASSIFIER_ASSET
        with resources.as_file(ref) as p:
            return load_digits_classifier(p)
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"no digits classifier weights at {path} (train them with "
                           "scripts/train_digits_classifier.py)")
    return load_feature_classifier(path, name=DIGITS_NAME)
