"""How ``cfgdiff eval`` and ``cfgdiff tune`` score samples: the feature-network and spread options, and the scorer.

``add_scoring_options(p)`` adds ``--inception-weights``, ``--features`` and ``--bootstrap``;
``check_scoring_options(args)`` refuses bad ones in one line before any work; ``scorer_for(args, meta, data)``
returns (the run's DataSpec, the scorer for its data, the exact mixture for 2-D testbed runs or None); with a
composition's ``terms``, a scorer against the real images of its positive-weight classes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cfgdiff.cli.arguments import UsageError


def add_scoring_options(p: argparse.ArgumentParser) -> None:
    """The feature network of FID/IS and the bootstrap of the spreads."""
    p.add_argument("--inception-weights", type=Path, default=None,
                   help="FID Inception-v3 weights file (needs the 'inception' extra); default: --features, else "
                        "the data set's shipped feature classifier (digits)")
    p.add_argument("--features", type=Path, default=None,
                   help="run directory of a feature classifier trained by 'cfgdiff train-features' on this data: "
                        "its penultimate features give FID, its softmax IS")
    p.add_argument("--bootstrap", type=int, default=100,
                   help="bootstrap resamples of the samples behind each FID (or SW) spread; 0: no spread "
                        "(default 100)")


def check_scoring_options(args: argparse.Namespace) -> None:
    """One-line UsageErrors for the scoring options, before anything is loaded or written."""
    if args.inception_weights is not None and not args.inception_weights.is_file():
        raise UsageError(f"--inception-weights: no file at {args.inception_weights}")
    if args.inception_weights is not None and args.features is not None:
        raise UsageError("--inception-weights and --features name two feature networks: give one")
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise UsageError(f"--bootstrap must be 0 (no spread) or at least 2, got {args.bootstrap}")


def scorer_for(args: argparse.Namespace, meta: dict, data: str, *,
               terms: Sequence[tuple[int, float]] | None = None) -> tuple[Any, Any, Any]:
    """(the run's DataSpec, the scorer for its data, the exact mixture for 2-D testbed runs or None).

    ``terms``: a composition's (c_i, w_i) (images only). The references, training and test split, are then the
    real images of the positive-weight classes (``ReferenceStats.of_classes``: their union, each class in its
    share of the split), and with a feature network that classifies the data's classes each row also reports the
    terms' class probabilities (with Inception-v3 it does not)."""
    from cfgdiff.core.toy import GaussianMixture
    from cfgdiff.data import DataSpec, load_dataset
    from cfgdiff.evaluation.features import classifies, feature_extractor_for
    from cfgdiff.evaluation.metrics import ImageScorer, VectorScorer, near_copy_detector, reference_statistics
    from cfgdiff.guidance.compose import positive_classes

    spec = DataSpec.from_json(meta["data_spec"]) if meta.get("data_spec") else DataSpec(source=data)
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    bootstrap = args.bootstrap if args.bootstrap >= 2 else 0
    if not train.is_image:
        if args.inception_weights is not None or args.features is not None:
            raise UsageError(f"{spec.source} holds {train.data_shape[0]}-D points, not images: it is scored by the "
                             "sliced Wasserstein distance to held-out points, without a feature network")
        mixture = GaussianMixture.three_gaussians() if spec.source == "gmm2d" else None
        return spec, VectorScorer(test.x, test.labels, train.num_classes, train=train.x, train_labels=train.labels,
                                  mixture=mixture, bootstrap=bootstrap, seed=args.seed), mixture
    extractor = feature_extractor_for(spec, args.inception_weights, args.features, data_shape=train.data_shape,
                                      device=args.device)
    train_ref, test_ref = reference_statistics(train, "train", extractor), reference_statistics(test, "test", extractor)
    by_terms: dict[str, Any] = {}
    if terms is not None:
        positive = positive_classes(terms)
        train_ref, test_ref = train_ref.of_classes(positive), test_ref.of_classes(positive)
        if classifies(extractor, train.num_classes):
            by_terms = {"terms": terms, "num_classes": train.num_classes}
    scorer = ImageScorer(extractor, train_ref, test_ref,
                         near_copies=near_copy_detector(train, test, device=args.device), bootstrap=bootstrap,
                         seed=args.seed, **by_terms)
    return spec, scorer, None
