"""Real-data statistics for FID (cached), and the FID floors: real against real at the samples' count N.

``reference_statistics(data, split, extractor)`` streams one split of a data set through a feature network and
keeps (μ, Σ) of all its features, (μ_c, Σ_c) of the features of each class c of the data's labels (per-class
FID), the IS of its images, and a *pool*: the features of up to ``POOL_SIZE`` of its
images (a seeded random subset, in data order), from which real sets of any N are drawn. Everything is cached
as .npz under ``$CFGDIFF_CACHE_DIR``, else ``$XDG_CACHE_HOME/cfgdiff``, else ``~/.cache/cfgdiff`` (or a
``cache_dir`` passed in), never inside the installed package. The cache file is named by the data set, the
split, a hash of the data's provenance record (``Dataset.source``: spec, format, path, sizes, content hash where
the loader records one) and the feature network's ``cache_key``, so other data or other weights never reuse it.
``ReferenceStats.of_classes(classes)`` narrows the statistics to the examples of some classes (the reference of a
composition of conditions: ``cfgdiff eval --compose``) without reading the data again.

FID is biased upward at small N (the sample's mean and covariance are noisy, and the noise adds), so a model's
FID means little without the FID of *real* images at the same N. ``matched_floor`` gives it:

* the floor of "N samples against the training statistics" is the FID of N held-out **test** images against the
  training statistics; of "N samples against the test statistics", N **training** images against the test
  statistics (training images are held out from the test split);
* with a pool of M ≥ N such images: the mean over ``draws`` random N-subsets (a random subset of an i.i.d. set
  is an i.i.d. set, so this is an unbiased estimate of the FID of N independent real images), and its spread
  is the standard deviation over the subsets (an underestimate as N approaches M; none at N = M);
* with M < N: the leading bias of FID is linear in 1/N (the mean term exactly: E||μ̂ - μ||² = Tr Σ / N), so
  FID(n) = a + b/n is fitted (least squares) to the subset means at n = M/2, 5M/8, …, M and evaluated at N
  (the upper half only: at n not much larger than the feature dimension FID falls faster than 1/n, which a fit
  over smaller subsets would carry into the extrapolation). This is unbiased where FID is linear in 1/n, but
  it inherits the noise of the one pool (no spread is given). An extrapolation can only resolve what the pool
  supports: it is never reported below the mean term Tr Σ / N (Σ the pool's feature covariance), which the
  expected FID of N real images exceeds (the Bures term is >= 0, and the reference's own mean adds to it); where
  the fit falls below that, the floor is that bound and says so (method "lower bound"). A bootstrap
  resample of N from M images would not do: its mean deviates from the population's as much as that of
  1/(1/N + 1/M) < M independent images, so its floor is biased upward (as for 209 instead of 500 images with
  digits' 360 test images).

This module imports neither training nor the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfgdiff.evaluation.features import FeatureExtractor
from cfgdiff.evaluation.metrics.fid import (
    FeatureStats,
    FrechetReference,
    feature_statistics,
    frechet_distance,
    union_statistics,
)
from cfgdiff.evaluation.metrics.inception_score import inception_score
from cfgdiff.runtime.cache import default_cache_dir

POOL_SIZE = 10_000  # features of at most this many real images are kept per split (real sets for the floors)
FLOOR_DRAWS = 20  # random real subsets averaged in a floor
CACHE_VERSION = 3  # bump when what a cache file holds changes (3: per-class statistics; older files are recomputed)


# -- batched feature extraction --------------------------------------------------------------------------


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


# -- cached reference statistics --------------------------------------------------------------------------


def data_key(name: str, source: dict[str, Any] | None) -> str:
    """``{name}-{hash}``: a file-name-safe data set name and 12 hex digits of its provenance record."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:40] or "data"
    record = json.dumps({"v": CACHE_VERSION, "source": source}, sort_keys=True, default=str)
    return f"{safe}-{hashlib.sha256(record.encode()).hexdigest()[:12]}"


def pool_rows(count: int) -> np.ndarray:
    """The examples (indices into the split, ascending) whose features form the pool: a seeded random subset of
    min(count, POOL_SIZE) of them, the same for every feature network."""
    return np.sort(np.random.default_rng(0).permutation(count)[:POOL_SIZE])


def class_words(classes: Sequence[int]) -> str:
    """"class 3" or "classes 3, 8"."""
    return f"class{'es' if len(classes) > 1 else ''} {', '.join(str(c) for c in classes)}"


@dataclass
class ReferenceStats:
    """Real-data statistics: (μ, Σ) of all features, the IS of the real data, how many examples, and ``pool``:
    float32 features [P, D] of P = min(count, POOL_SIZE) of them, a seeded random subset (None if not kept),
    with ``pool_labels`` [P], the label of each pool row (None when the labels were not given);
    and per class c of the data's labels (None when the labels were not given): ``class_mu`` [K, D],
    ``class_cov`` [K, D, D] and ``class_count`` [K] (a class with fewer than 2 examples has NaN statistics).
    ``classes``: the classes whose examples these are (None: the whole split; see ``of_classes``)."""

    mu: np.ndarray
    cov: np.ndarray
    inception_score: float
    count: int
    pool: np.ndarray | None = None
    class_mu: np.ndarray | None = None
    class_cov: np.ndarray | None = None
    class_count: np.ndarray | None = None
    pool_labels: np.ndarray | None = None
    classes: tuple[int, ...] | None = None

    def of_classes(self, classes: Sequence[int]) -> ReferenceStats:
        """The statistics of the union of the examples of ``classes``, each class in its own share of the split
        (as the whole split's statistics hold every class), without reading the data again:
        (μ, Σ) = ``union_statistics`` of the classes' (μ_c, Σ_c, n_c), exactly those of the union's features;
        ``count`` = Σ n_c; the pool rows of those classes (None without ``pool_labels``). The result has no
        per-class statistics, and no IS (NaN: the pool's class probabilities are not kept). ValueError without
        per-class statistics, or for a class with fewer than 2 examples."""
        wanted = tuple(sorted({int(c) for c in classes}))
        if self.class_count is None or self.class_mu is None or self.class_cov is None:
            raise ValueError("these reference statistics have no per-class statistics (the labels were not given)")
        if not wanted:
            raise ValueError("of_classes needs at least one class")
        for c in wanted:
            if not 0 <= c < len(self.class_count) or self.class_count[c] < 2:
                have = 0 if not 0 <= c < len(self.class_count) else int(self.class_count[c])
                raise ValueError(f"class {c} has {have} real examples here; a reference needs at least 2")
        index = list(wanted)
        mu, cov = union_statistics(self.class_mu[index], self.class_cov[index], self.class_count[index])
        pool = pool_labels = None
        if self.pool is not None and self.pool_labels is not None:
            keep = np.isin(self.pool_labels, index)
            pool, pool_labels = self.pool[keep], self.pool_labels[keep]
        return ReferenceStats(mu, cov, float("nan"), int(self.class_count[index].sum()), pool,
                              pool_labels=pool_labels, classes=wanted)

    def describe(self, what: str, *, brackets: bool = False) -> str:
        """``what`` (e.g. "training images"), followed by "of classes 3, 8" (or "(classes 3, 8)" with
        ``brackets``) when these are some classes' statistics only."""
        if self.classes is None:
            return what
        return f"{what} ({class_words(self.classes)})" if brackets else f"{what} of {class_words(self.classes)}"

    def frechet(self) -> FrechetReference:
        return FrechetReference(self.mu, self.cov)

    def class_frechet(self, c: int) -> FrechetReference | None:
        """The statistics of class c's real examples, or None without per-class statistics or examples."""
        if self.class_count is None or c >= len(self.class_count) or self.class_count[c] < 2:
            return None
        return FrechetReference(self.class_mu[c], self.class_cov[c])


class _Moments:
    """Streaming mean and covariance in float64, shifted by the first chunk's mean against cancellation."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def add(self, feats: np.ndarray) -> None:
        if self.shift is None:
            self.shift = feats.mean(axis=0)
            self.total = np.zeros_like(self.shift)
            self.outer = np.zeros((feats.shape[1], feats.shape[1]))
        centred = feats - self.shift
        self.total += centred.sum(axis=0)
        self.outer += centred.T @ centred
        self.count += feats.shape[0]

    def statistics(self) -> FeatureStats:
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        mean_c = self.total / self.count
        cov = (self.outer - self.count * np.outer(mean_c, mean_c)) / (self.count - 1)
        return self.shift + mean_c, 0.5 * (cov + cov.T)


def _chunks_of(dataset: Any, batch_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, len(dataset), batch_size):
        yield dataset.to_x(torch.as_tensor(dataset.stored[start:start + batch_size]))


def _class_statistics(per_class: list[_Moments], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class_mu [K, D], class_cov [K, D, D], class_count [K]); NaN statistics for a class of < 2 examples."""
    mus = np.full((len(per_class), dim), np.nan)
    covs = np.full((len(per_class), dim, dim), np.nan)
    for c, moments in enumerate(per_class):
        if moments.count >= 2:
            mus[c], covs[c] = moments.statistics()
    return mus, covs, np.array([m.count for m in per_class], dtype=np.int64)


def _compute_reference(chunks: Iterable[torch.Tensor], count: int, extractor: FeatureExtractor,
                       batch_size: int, labels: np.ndarray | None = None,
                       num_classes: int | None = None) -> ReferenceStats:
    # pool row j = example pool_index[j]: a seeded random subset, kept in data order (all rows when count <= POOL_SIZE)
    pool_index = pool_rows(count)
    position = np.full(count, -1, dtype=np.int64)
    position[pool_index] = np.arange(pool_index.size)
    moments = _Moments()
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        num_classes = int(num_classes if num_classes is not None else labels.max() + 1)
    per_class = [_Moments() for _ in range(num_classes)] if labels is not None else []
    pool_feats: np.ndarray | None = None
    pool_probs: np.ndarray | None = None
    offset = 0
    for chunk in chunks:
        for start in range(0, chunk.shape[0], batch_size):
            feats_t, probs_t = extractor(chunk[start:start + batch_size])
            feats = feats_t.detach().cpu().numpy().astype(np.float64).reshape(feats_t.shape[0], -1)
            probs = probs_t.detach().cpu().numpy().astype(np.float64)
            if pool_feats is None:
                pool_feats = np.zeros((pool_index.size, feats.shape[1]), np.float32)
                pool_probs = np.zeros((pool_index.size, probs.shape[1]), np.float64)
            moments.add(feats)
            if labels is not None:
                chunk_labels = labels[offset:offset + feats.shape[0]]
                for c in np.unique(chunk_labels):
                    per_class[c].add(feats[chunk_labels == c])
            where = position[offset:offset + feats.shape[0]]
            keep = where >= 0
            pool_feats[where[keep]] = feats[keep]
            pool_probs[where[keep]] = probs[keep]
            offset += feats.shape[0]
    if offset != count:
        raise ValueError(f"expected {count} examples, the data gave {offset}")
    mu, cov = moments.statistics()
    stats = ReferenceStats(mu, cov, inception_score(pool_probs)[0], count, pool_feats)
    if labels is not None:
        stats.class_mu, stats.class_cov, stats.class_count = _class_statistics(per_class, mu.shape[0])
        stats.pool_labels = labels[pool_index]
    return stats


def reference_statistics(
    data: Any,
    split: str,
    extractor: FeatureExtractor,
    *,
    cache_dir: str | os.PathLike | None = None,
    load_x: Callable[[str, str], torch.Tensor] | None = None,
    batch_size: int = 500,
) -> ReferenceStats:
    """Feature statistics (overall and per class of the data's labels) and pool of one split of ``data`` (a
    built-in name, a path, a ``cfgdiff.data.DataSpec`` or a loaded ``cfgdiff.data.Dataset`` of that split), cached as
    ``{cache_dir}/refstats-{name}-{hash}-{split}-{extractor.cache_key}.npz``.

    ``load_x(data, split)`` returns the images instead of ``cfgdiff.data.load_dataset`` (then the cache file is
    named by ``str(data)`` alone, and there are no per-class statistics). The IS is that of the pool (all images
    when there are at most POOL_SIZE). A cache file of an older ``CACHE_VERSION`` has another name (the version is
    in the hash), so it is never read as this one: the statistics are recomputed once.
    """
    from cfgdiff.data import Dataset, DataSpec, load_dataset

    dataset = None
    if load_x is not None:
        key = data_key(str(data), None)
    else:
        if isinstance(data, Dataset):
            dataset = data
        else:
            spec = data if isinstance(data, DataSpec) else DataSpec(source=str(data))
            dataset = load_dataset(spec, split)
        key = data_key(dataset.name, dataset.source)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"refstats-{key}-{split}-{extractor.cache_key}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                per_class = {k: f[k] for k in ("class_mu", "class_cov", "class_count") if k in f.files}
                cached = ReferenceStats(f["mu"], f["cov"], float(f["inception_score"]), int(f["count"]),
                                        f["pool"], **per_class)
            if dataset is not None:  # the pool's labels: the same rows of the data's labels (not cached)
                cached.pool_labels = np.asarray(dataset.labels, dtype=np.int64)[pool_rows(cached.count)]
            return cached
        except (OSError, KeyError, ValueError, IndexError):
            pass  # a corrupt or old cache entry: recompute below
    if dataset is None:
        x = load_x(str(data), split)
        stats = _compute_reference([x], int(x.shape[0]), extractor, batch_size)
    else:
        stats = _compute_reference(_chunks_of(dataset, batch_size), len(dataset), extractor, batch_size,
                                   labels=np.asarray(dataset.labels), num_classes=dataset.num_classes)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        per_class = ({} if stats.class_count is None else
                     {"class_mu": stats.class_mu, "class_cov": stats.class_cov, "class_count": stats.class_count})
        np.savez(tmp, mu=stats.mu, cov=stats.cov, inception_score=stats.inception_score, count=stats.count,
                 pool=stats.pool, **per_class)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a recomputation next time
    return stats


def fid_floor(data: Any, extractor: FeatureExtractor, *, cache_dir: str | os.PathLike | None = None) -> float:
    """FID between the whole held-out test split and the training split, at the test split's count (which is
    not the samples' N: see ``matched_floor`` for the floor to compare a model's FID with)."""
    train = reference_statistics(data, "train", extractor, cache_dir=cache_dir)
    test = reference_statistics(data, "test", extractor, cache_dir=cache_dir)
    return frechet_distance(test.mu, test.cov, train.mu, train.cov)


# -- floors at matched N -----------------------------------------------------------------------------------


@dataclass
class Floor:
    """Real-against-real FID at the samples' count ``n`` (see the module docstring for the definition)."""

    value: float
    std: float | None  # standard deviation over the real subsets; None when extrapolated or n = pool_count
    n: int  # the matched sample count
    pool_count: int  # real images the subsets were drawn from
    draws: int  # random subsets per size
    method: str  # "subsets" (n <= pool_count), "extrapolated" (fit a + b/n from smaller subsets), or
    # "lower bound" (the fit fell below the mean term Tr Σ / n, which the floor is at least: the value is that bound)

    def describe(self, pool_name: str, reference_name: str) -> str:
        if self.method == "subsets":
            how = (f"mean over {self.draws} random sets of {self.n} of the {self.pool_count} {pool_name}"
                   if self.n < self.pool_count else f"all {self.pool_count} {pool_name}")
        elif self.method == "extrapolated":
            how = (f"fit FID(n) = a + b/n to random sets of n = {self.pool_count // 2}…{self.pool_count} of the "
                   f"{self.pool_count} {pool_name}, evaluated at n = {self.n}")
        else:
            how = (f"at least the mean term Tr Σ / {self.n}: the fit FID(n) = a + b/n to random sets of the "
                   f"{self.pool_count} {pool_name} falls below it at n = {self.n}, which {self.pool_count} images "
                   "cannot resolve")
        return f"{self.n} {pool_name} against the {reference_name} statistics ({how})"


def _subset_fids(pool: np.ndarray, reference: FrechetReference, size: int, draws: int,
                 rng: np.random.Generator) -> np.ndarray:
    if size >= pool.shape[0]:
        return np.array([reference.of_features(pool)])
    return np.array([reference.of_features(pool[rng.choice(pool.shape[0], size, replace=False)])
                     for _ in range(draws)])


def matched_floor(pool: np.ndarray, reference: FrechetReference, n: int, *, draws: int = FLOOR_DRAWS,
                  seed: int = 0) -> Floor:
    """FID of n real images (rows of ``pool``, held out from the reference) against ``reference``.

    n <= M = len(pool): the mean (and std) over ``draws`` random n-subsets. n > M: FID(m) = a + b/m fitted by
    least squares to the subset means at m = M/2, 5M/8, …, M and evaluated at n (std None), but never below
    Tr Σ / n (Σ the pool's covariance; method "lower bound" when the fit is below it).
    """
    pool = np.asarray(pool, np.float64)
    count = pool.shape[0]
    if n < 2 or count < 2:
        raise ValueError(f"a floor needs n >= 2 and at least 2 real images, got n = {n}, {count} images")
    rng = np.random.default_rng(seed)
    if n <= count:
        fids = _subset_fids(pool, reference, n, draws, rng)
        std = float(fids.std(ddof=1)) if fids.size > 1 else None
        return Floor(float(fids.mean()), std, n, count, draws, "subsets")
    sizes = sorted({max(2, round(count * j / 8)) for j in range(4, 9)})
    means = np.array([_subset_fids(pool, reference, m, draws, rng).mean() for m in sizes])
    design = np.stack([np.ones(len(sizes)), 1.0 / np.asarray(sizes, np.float64)], axis=1)  # [S, 2]
    (a, b), *_ = np.linalg.lstsq(design, means, rcond=None)
    bound = float(np.trace(np.cov(pool, rowvar=False)) / n)  # E||μ̂_n − μ||² = Tr Σ / n <= E FID
    if a + b / n < bound:
        return Floor(bound, None, n, count, draws, "lower bound")
    return Floor(float(a + b / n), None, n, count, draws, "extrapolated")
