"""Feature networks for FID and IS, one file per kind:

* ``base``: the ``FeatureExtractor`` contract, x [N, C, H, W] in [-1, 1] -> (features [N, D], probs [N, K]),
  each with a ``name`` ("FID ({name} features)") and a ``cache_key`` identifying its weights;
* ``cfgdiff.models.feature_classifier``: ``FeatureClassifier``, a clean-image CNN for any (C, H, W) and K, and its
  ``features.safetensors`` file (``cfgdiff train-features``, ``cfgdiff.training.features``, trains one for any
  labelled image data);
* ``digits``: the shipped instance for the built-in 8×8 digits;
* ``inception``: Inception-v3 via the optional torch-fidelity package and a user-supplied weights file.

``feature_extractor_for`` picks one: ``--inception-weights`` > ``--features DIR`` > the data set's shipped
network (digits) > a one-line error saying to run ``cfgdiff train-features``.
"""

from __future__ import annotations

import os
from typing import Any

from cfgdiff.evaluation.features.base import FeatureExtractor
from cfgdiff.evaluation.features.digits import (
    DIGITS_CLASSIFIER_ASSET,
    DigitsClassifier,
    DigitsClassifierNet,
    load_digits_classifier,
    save_digits_classifier,
)
from cfgdiff.evaluation.features.inception import INCEPTION_HINT, InceptionFeatures, _fidelity_inception_class
from cfgdiff.models.feature_classifier import (
    FEATURES_FILE,
    METADATA_KEY,
    ClassifierFeatures,
    FeatureClassifier,
    FeatureError,
    classifier_accuracy,
    default_classifier_config,
    load_feature_classifier,
    read_feature_record,
    save_feature_classifier,
    stage_count,
    weights_digest,
)

__all__ = [
    "DIGITS_CLASSIFIER_ASSET", "FEATURES_FILE", "INCEPTION_HINT", "METADATA_KEY", "ClassifierFeatures",
    "DigitsClassifier", "DigitsClassifierNet", "FeatureClassifier", "FeatureError",
    "FeatureExtractor", "InceptionFeatures", "_fidelity_inception_class", "classifier_accuracy", "classifies",
    "default_classifier_config", "feature_extractor_for", "load_digits_classifier", "load_feature_classifier",
    "read_feature_record", "save_digits_classifier", "save_feature_classifier", "stage_count",
    "weights_digest",
]

SHIPPED = {"digits": load_digits_classifier}  # built-in data sets with a shipped feature network


def _source_of(data: Any) -> str:
    return str(getattr(data, "source", data))


def classifies(extractor: FeatureExtractor, num_classes: int) -> bool:
    """Whether ``extractor``'s probabilities are over the data's ``num_classes`` classes: a cfgdiff feature classifier
    (``ClassifierFeatures``, the shipped digits one included) with that many outputs. Inception-v3's ImageNet
    labels are not."""
    net = getattr(extractor, "net", None)
    return isinstance(extractor, ClassifierFeatures) and int(getattr(net, "num_classes", -1)) == int(num_classes)


def feature_extractor_for(
    data: Any,
    inception_weights: str | os.PathLike | None = None,
    features: str | os.PathLike | None = None,
    *,
    data_shape: tuple[int, ...] | None = None,
    device: Any = "cpu",
) -> FeatureExtractor:
    """The feature network for ``data`` (a built-in name, a path or a ``cfgdiff.data.DataSpec``):
    Inception-v3 when ``inception_weights`` is given, else the trained classifier in the ``features`` run
    directory, else the data set's shipped network (digits), else ``FeatureError`` saying how to train one.
    With ``data_shape`` [C, H, W], a classifier trained on images of another shape is refused."""
    if inception_weights is not None:
        return InceptionFeatures(inception_weights)
    source = _source_of(data)
    if features is not None:
        extractor = load_feature_classifier(features, device=device)
    elif source in SHIPPED:
        extractor = SHIPPED[source]()
    else:
        raise FeatureError(f"no feature network for {source}: train one with 'cfgdiff train-features --data "
                           f"{source} --run-dir DIR' and pass --features DIR (or --inception-weights PATH)")
    if data_shape is not None:
        config = extractor.metadata.get("config", {})
        net_shape = (int(config.get("in_channels", 1)), *[int(v) for v in config.get("image_size", (8, 8))])
        if tuple(net_shape) != tuple(data_shape):
            raise FeatureError(f"the feature network takes images {net_shape}, the data are {tuple(data_shape)}"
                               + (f" ({features})" if features is not None else ""))
    return extractor
