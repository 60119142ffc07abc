"""Sample-quality metrics: Fréchet distance (FID) and Inception Score (IS) over a feature network.

Formulas (``shared/docs/math.md``):

    FID = ||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2})
    IS  = exp(E_x KL(p(y | x) || p(y))),  p(y) = E_x p(y | x), averaged over ``splits`` disjoint splits

The FID formula is a pure function of two (mean, covariance) pairs, apart from feature extraction. Which network
gives the features decides what the numbers mean: with ``cfgdiff.features.DigitsClassifier`` they are "FID
(digits-classifier features)" and "IS (digits classifier)", not comparable with Inception-v3 numbers.

Reference statistics of real data are computed once per (data set, split, feature network) and cached as .npz
under ``$CFGDIFF_CACHE_DIR``, else ``$XDG_CACHE_HOME/cfgdiff``, else ``~/.cache/cfgdiff`` (or a ``cache_dir``
passed in, e.g. the run directory); never inside the installed package.

This module imports neither training nor the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from cfgdiff.features import FeatureExtractor

FeatureStats = tuple[np.ndarray, np.ndarray]  # (mu [D], cov [D, D]) in float64


def metric_names(extractor_name: str) -> tuple[str, str]:
    """What to call FID and IS computed with a feature network, e.g. ("FID (digits-classifier features)", ...)."""
    if extractor_name.lower().startswith("inception"):
        return "FID", "IS"
    return f"FID ({extractor_name} features)", f"IS ({extractor_name.removesuffix('-classifier')} classifier)"


# -- FID -------------------------------------------------------------------------------------------------


def _sqrtm_psd_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((Σ_a Σ_b)^{1/2}) for symmetric PSD Σ_a, Σ_b, stably.

    (Σ_a Σ_b)^{1/2} is similar to (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}, which is symmetric PSD, so its trace is
    Σ sqrt(max(eigenvalue, 0)) of that symmetric matrix: no complex arithmetic, no imaginary parts.
    """
    evals_a, evecs_a = np.linalg.eigh(cov_a)
    sqrt_a = (evecs_a * np.sqrt(np.clip(evals_a, 0.0, None))) @ evecs_a.T  # Σ_a^{1/2}
    middle = sqrt_a @ cov_b @ sqrt_a
    middle = 0.5 * (middle + middle.T)
    evals = np.linalg.eigvalsh(middle)
    return float(np.sqrt(np.clip(evals, 0.0, None)).sum())


def frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray,
                     *, method: str = "eigh") -> float:
    """FID = ||μ_a - μ_b||² + Tr(Σ_a) + Tr(Σ_b) - 2 Tr((Σ_a Σ_b)^{1/2}), in float64.

    ``method="eigh"`` (default) uses the symmetric form Tr((Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}); ``"sqrtm"`` uses
    ``scipy.linalg.sqrtm(Σ_a Σ_b)`` as pytorch-fid does: a tiny ε I is added to both covariances if the product
    is singular, and imaginary parts below 1e-3 (round-off) are dropped, larger ones raise ``ValueError``.
    The result is clipped at 0 (round-off can make an exact 0 slightly negative).
    """
    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(f"shape mismatch: mu {mu_a.shape} / {mu_b.shape}, cov {cov_a.shape} / {cov_b.shape}")
    diff = mu_a - mu_b
    if method == "eigh":
        tr_covmean = _sqrtm_psd_product(cov_a, cov_b)
    elif method == "sqrtm":
        with np.errstate(all="ignore"):
            covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(cov_a.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(Σ_a Σ_b)")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise ValueError(f"unknown method {method!r}; choose eigh or sqrtm")
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean)
    return max(value, 0.0)


def feature_statistics(features: np.ndarray | torch.Tensor) -> FeatureStats:
    """(μ, Σ) of feature rows [N, D] in float64; Σ with the unbiased 1/(N-1) normalisation (N ≥ 2)."""
    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    feats = feats.astype(np.float64).reshape(feats.shape[0], -1)
    if feats.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


# -- IS --------------------------------------------------------------------------------------------------


def inception_score(probs: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over ``splits`` disjoint splits of exp(E_x KL(p(y|x) || p(y))), p(y) the split's mean.

    ``probs``: [N, K] class probabilities (rows summing to 1). Uniform predictions give 1; confident
    predictions spread evenly over K classes give K. ``splits`` is capped at N.
    """
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    p = p.astype(np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"probs must be [N, K] with N >= 1, got shape {p.shape}")
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    scores = []
    for part in np.array_split(p, min(splits, p.shape[0])):
        p_y = part.mean(axis=0, keepdims=True)  # [1, K]
        # KL with 0 log 0 = 0
        kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1.0)) - np.log(np.where(p_y > 0, p_y, 1.0))),
                      0.0).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


# -- batched feature extraction and reference statistics -------------------------------------------------


@dataclass
class FeatureSet:
    """Features [N, D] and class probabilities [N, K] of one sample set, as float64 numpy arrays."""

    features: np.ndarray
    probs: np.ndarray

    def statistics(self) -> FeatureStats:
        return feature_statistics(self.features)


class FeatureAccumulator:
    """Collects features and probabilities chunk by chunk (memory is O(N·D), not O(N·pixels))."""

    def __init__(self, extractor: FeatureExtractor, batch_size: int = 500) -> None:
        self.extractor = extractor
        self.batch_size = batch_size
        self._feats: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []

    def add(self, x: torch.Tensor) -> None:
        for start in range(0, x.shape[0], self.batch_size):
            feats, probs = self.extractor(x[start:start + self.batch_size])
            self._feats.append(feats.detach().cpu().numpy().astype(np.float64))
            self._probs.append(probs.detach().cpu().numpy().astype(np.float64))

    def result(self) -> FeatureSet:
        if not self._feats:
            raise ValueError("no samples were added")
        return FeatureSet(np.concatenate(self._feats), np.concatenate(self._probs))


def extract_features(extractor: FeatureExtractor, x: torch.Tensor | Iterable[torch.Tensor],
                     batch_size: int = 500) -> FeatureSet:
    """Features and probabilities of a tensor [N, C, H, W] or an iterable of such chunks, in batches."""
    acc = FeatureAccumulator(extractor, batch_size)
    for chunk in ([x] if isinstance(x, torch.Tensor) else x):
        acc.add(chunk)
    return acc.result()


def default_cache_dir() -> Path:
    """``$CFGDIFF_CACHE_DIR``, else ``$XDG_CACHE_HOME/cfgdiff``, else ``~/.cache/cfgdiff``."""
    if os.environ.get("CFGDIFF_CACHE_DIR"):
        return Path(os.environ["CFGDIFF_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cfgdiff"


@dataclass
class ReferenceStats:
    """Real-data statistics: (μ, Σ) of features, the IS of the real data, and how many examples."""

    mu: np.ndarray
    cov: np.ndarray
    inception_score: float
    count: int


def reference_statistics(
    data: str,
    split: str,
    extractor: FeatureExtractor,
    *,
    cache_dir: str | os.PathLike | None = None,
    load_x: Callable[[str, str], torch.Tensor] | None = None,
) -> ReferenceStats:
    """Feature statistics of a real data split, cached as ``{cache_dir}/refstats-{data}-{split}-{key}.npz``.

    ``load_x(data, split)`` returns the images (default: ``cfgdiff.data.load_dataset(data, split).x``).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"refstats-{data}-{split}-{extractor.cache_key}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                return ReferenceStats(f["mu"], f["cov"], float(f["inception_score"]), int(f["count"]))
        except (OSError, KeyError, ValueError):
            pass  # a corrupt cache entry: recompute below
    if load_x is None:
        from cfgdiff.data import load_dataset

        x = load_dataset(data, split).x
    else:
        x = load_x(data, split)
    fs = extract_features(extractor, x)
    mu, cov = fs.statistics()
    stats = ReferenceStats(mu, cov, inception_score(fs.probs)[0], int(fs.features.shape[0]))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, mu=mu, cov=cov, inception_score=stats.inception_score, count=stats.count)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a recomputation next time
    return stats


def fid_floor(data: str, extractor: FeatureExtractor, *, cache_dir: str | os.PathLike | None = None) -> float:
    """FID between the held-out test split and the training split: the best a model can hope to score
    (at the test split's sample count; FID is biased upward at small N)."""
    train = reference_statistics(data, "train", extractor, cache_dir=cache_dir)
    test = reference_statistics(data, "test", extractor, cache_dir=cache_dir)
    return frechet_distance(test.mu, test.cov, train.mu, train.cov)
