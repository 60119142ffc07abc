"""What ``cfgdiff eval`` measures on one set of samples: images (FID, IS, memorisation) or 2-D points.

A *scorer* makes one ``ScoreSet`` per guidance weight; the sweep feeds it the samples chunk by chunk
(``add(x, labels)``; for images only their features are kept, [N, D]) and ``finish(w)`` returns that
row's metric fields. ``meta(n)`` describes the references and the floors at the sweep's sample count n.

* ``ImageScorer``: FID against the training split's statistics (``fid``) and against the held-out test split's
  (``fid_test``), each with its bootstrap spread (``fid_std``, ``fid_test_std``, B = ``bootstrap`` resamples of
  the samples' features, the references fixed); ``fid_delta`` = FID - FID of the sweep's first row, ± the
  *paired* bootstrap std (``fid_delta_std``: both rows resampled with the same multiplicities, since row i of
  every w starts from the same noise), which says whether two rows differ beyond noise; IS ± std over 10
  splits; and ``memorised``, the share of near-copies of training images (``cfgdiff.evaluation.metrics.memorisation``).
  Fidelity and diversity apart (``cfgdiff.evaluation.metrics.fidelity_diversity``), in the same feature space:
  ``precision`` and ``recall`` (k = ``prdc_k``), ``density`` and ``coverage`` (k = ``density_k``) of the samples
  against a seeded random subset of N of the training split's pool (equal sizes, the PRDC convention; the whole
  pool when N is larger; the same subset for every w), each ± its standard error given the other set; ``kid`` ±
  ``kid_std`` against the whole pool (``kid_subsets`` seeded subsets of min(1000, N, pool) of each); and
  ``fid_per_class``, the FID of the samples of class c against the training images of class c, averaged over the
  classes. ``meta(n)`` adds the floors at matched N (``cfgdiff.evaluation.metrics.reference``) and the settings
  and real sets of these metrics.
  A composition of conditions (``cfgdiff eval --compose``) is scored the same way against references made of
  some classes (``ReferenceStats.of_classes``: its positive-weight classes; the class-averaged FID is then not
  defined), and with ``terms`` each row adds ``term_prob`` / ``term_prob_std``, the mean probability the feature
  network gives each term's class and its standard error (``cfgdiff.evaluation.metrics.adherence``).
* ``VectorScorer``: for vector data such as the 2-D mixture, the sliced Wasserstein distance SW_2 (128 seeded
  directions) to held-out points (at most 10 000, a seeded subset: ``sliced_wasserstein`` overall with both sets
  class-balanced, ``sliced_wasserstein_per_class``, with a bootstrap spread) and, when the data are the exact
  three-Gaussian testbed, the mean normalised log-density of the samples under the exact guided target
  p̃_w(x | c) (``log_density`` ± its standard error, and ``log_density_target`` = -H(p̃_w), what a perfect sampler
  of p̃_w scores); and ``precision``, ``recall``, ``density``, ``coverage`` of the samples' coordinates against
  a seeded random subset of N held-out points (equal sizes; all of them when N is larger), as for images.

Row fields not measured for a kind of data are None (JSON null), so every row has the same keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.evaluation.features import FeatureExtractor
from cfgdiff.evaluation.metrics.adherence import term_probabilities
from cfgdiff.evaluation.metrics.fid import (
    DEFAULT_BOOTSTRAP,
    class_averaged_fid,
    fid_with_spread,
    paired_bootstrap_difference,
)
from cfgdiff.evaluation.metrics.fidelity_diversity import (
    DENSITY_K,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    PRDC_K,
    kid,
    prdc,
    real_subset,
)
from cfgdiff.evaluation.metrics.guided_density import GuidedDensity, mean_log_density
from cfgdiff.evaluation.metrics.inception_score import inception_score
from cfgdiff.evaluation.metrics.memorisation import NearCopyDetector
from cfgdiff.evaluation.metrics.reference import FLOOR_DRAWS, FeatureAccumulator, Floor, ReferenceStats, matched_floor
from cfgdiff.evaluation.metrics.sliced_wasserstein import (
    SortedProjections,
    random_directions,
    wasserstein_1d_power_sorted,
)
from cfgdiff.guidance.compose import Terms, check_terms

VECTOR_PROJECTIONS = 128  # directions of the sliced Wasserstein distance for vector data (2-D: ample)
HELD_OUT_MAX = 10_000  # held-out points kept as the SW reference (a seeded random subset beyond this)

# every metric field a sweep row may carry (None where not measured)
IMAGE_FIELDS = ("fid", "fid_std", "fid_test", "fid_test_std", "fid_delta", "fid_delta_std", "inception_score",
                "inception_score_std", "memorised", "kid", "kid_std", "fid_per_class")
VECTOR_FIELDS = ("sliced_wasserstein", "sliced_wasserstein_std", "sliced_wasserstein_per_class", "log_density",
                 "log_density_std", "log_density_target")
PRDC_FIELDS = ("precision", "precision_std", "recall", "recall_std", "density", "density_std", "coverage",
               "coverage_std")  # both kinds of data
TERM_FIELDS = ("term_prob", "term_prob_std")  # a composition's adherence per term: {"CLASS:WEIGHT": value}


def metric_names(extractor_name: str) -> tuple[str, str]:
    """What to call FID and IS computed with a feature network, e.g. ("FID (digits-classifier features)", ...)."""
    if extractor_name.lower().startswith("inception"):
        return "FID", "IS"
    return f"FID ({extractor_name} features)", f"IS ({extractor_name.removesuffix('-classifier')} classifier)"


def _empty_row() -> dict[str, Any]:
    return dict.fromkeys(IMAGE_FIELDS + VECTOR_FIELDS + PRDC_FIELDS + TERM_FIELDS)


def _prdc_fields(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int,
                 density_k: int) -> dict[str, Any]:
    """The PRDC_FIELDS of ``fake`` against ``real`` (None each when a set is too small for its k-NN balls)."""
    if min(len(real), len(fake)) <= max(k, density_k):
        return {}
    result = prdc(real, fake, k=k, density_k=density_k)
    return {name: getattr(result, name) for name in PRDC_FIELDS}


def _prdc_real_definition(count: int, pool_count: int, pool_name: str) -> str:
    if count >= pool_count:
        return f"all {pool_count} {pool_name}"
    return f"a seeded random subset of {count} of the {pool_count} {pool_name} (the same for every w)"


class ScoreSet(Protocol):
    def add(self, x: torch.Tensor, labels: torch.Tensor) -> None: ...

    def finish(self, w: float) -> dict[str, Any]: ...


class SampleScorer(Protocol):
    kind: str  # "images" or "vectors"

    def new_set(self) -> ScoreSet: ...

    def meta(self, n: int) -> dict[str, Any]: ...


# -- images ------------------------------------------------------------------------------------------------


class _ImageSet:
    def __init__(self, scorer: ImageScorer) -> None:
        self.scorer = scorer
        self.features = FeatureAccumulator(scorer.extractor)
        self.labels: list[np.ndarray] = []
        self.near_copies = 0
        self.count = 0

    def add(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.features.add(x)
        self.labels.append(np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64))
        if self.scorer.near_copies is not None:
            detector = self.scorer.near_copies
            self.near_copies += int((detector.distances(x) < detector.threshold).sum())
        self.count += x.shape[0]

    def finish(self, w: float) -> dict[str, Any]:
        s = self.scorer
        feats = self.features.result()
        references = [s.train.frechet()] + ([s.test.frechet()] if s.test is not None else [])
        spreads = fid_with_spread(feats.features, references, draws=s.bootstrap, seed=s.seed)
        is_mean, is_std = inception_score(feats.probs)
        row = _empty_row()
        row.update(fid=spreads[0][0], fid_std=spreads[0][1], inception_score=is_mean, inception_score_std=is_std)
        if s.test is not None:
            row.update(fid_test=spreads[1][0], fid_test_std=spreads[1][1])
        if s.baseline is None:  # the sweep's first row: the others' differences are taken against it
            s.baseline = (w, feats.features, spreads[0][0])
        else:
            row["fid_delta"] = spreads[0][0] - s.baseline[2]
            if s.bootstrap >= 2 and s.baseline[1].shape == feats.features.shape:
                delta = paired_bootstrap_difference(feats.features, s.baseline[1], references[0],
                                                    draws=s.bootstrap, seed=s.seed)
                row["fid_delta_std"] = float(delta.std(ddof=1))
        if s.near_copies is not None:
            row["memorised"] = self.near_copies / max(self.count, 1)
        if s.train.pool is not None:
            n = feats.features.shape[0]
            row.update(_prdc_fields(s.prdc_real(n), feats.features, s.prdc_k, s.density_k))
            if min(n, s.train.pool.shape[0]) >= 2:
                row["kid"], row["kid_std"], _ = kid(feats.features, s.train.pool, subsets=s.kid_subsets,
                                                    subset_size=s.kid_subset_size(n), seed=s.seed)
        if s.train.class_count is not None:
            references = [s.train.class_frechet(c) for c in range(len(s.train.class_count))]
            row["fid_per_class"] = class_averaged_fid(feats.features, np.concatenate(self.labels), references)
        if s.terms is not None:
            row.update(term_probabilities(feats.probs, s.terms))
        return row


class ImageScorer:
    """FID (vs train and vs test, with bootstrap spreads), IS, memorisation, precision/recall, density/coverage,
    KID and the class-averaged FID of image samples (module docstring). One scorer per sweep: the first set it
    scores is the baseline of the others' paired differences.

    ``train`` and ``test`` are the references, a whole split's or some classes' (``ReferenceStats.of_classes``).
    ``terms``: a composition's (c_i, w_i); each row then reports the mean probability of c_i under the feature
    network (``term_prob``, ± ``term_prob_std``), which must classify the data's classes (``num_classes`` of
    them, checked on the terms)."""

    kind = "images"

    def __init__(self, extractor: FeatureExtractor, train: ReferenceStats, test: ReferenceStats | None = None,
                 *, near_copies: NearCopyDetector | None = None, bootstrap: int = DEFAULT_BOOTSTRAP,
                 floor_draws: int = FLOOR_DRAWS, seed: int = 0, prdc_k: int = PRDC_K, density_k: int = DENSITY_K,
                 kid_subsets: int = KID_SUBSETS, terms: Terms | None = None,
                 num_classes: int | None = None) -> None:
        if terms is not None and num_classes is None:
            raise ValueError("term probabilities need the number of classes the feature network classifies")
        self.terms = None if terms is None else check_terms(terms, int(num_classes or 0))
        self.extractor, self.train, self.test = extractor, train, test
        self.near_copies = near_copies
        self.prdc_k, self.density_k, self.kid_subsets = prdc_k, density_k, kid_subsets
        self._prdc_real: dict[int, np.ndarray] = {}
        self.bootstrap, self.floor_draws, self.seed = bootstrap, floor_draws, seed
        self.baseline: tuple[float, np.ndarray, float] | None = None  # (w, features, FID) of the first set scored

    def new_set(self) -> _ImageSet:
        return _ImageSet(self)

    def prdc_real(self, n: int) -> np.ndarray:
        """The real features of PRDC at n samples: a seeded random n-subset of the training pool (see
        ``fidelity_diversity.real_subset``), drawn once per n."""
        if n not in self._prdc_real:
            self._prdc_real[n] = real_subset(np.asarray(self.train.pool, np.float64), n, self.seed)
        return self._prdc_real[n]

    def kid_subset_size(self, n: int) -> int:
        """min(1000, n, pool size): torch-fidelity's subset size where both sets have 1000 rows."""
        return min(KID_SUBSET_SIZE, n, 0 if self.train.pool is None else self.train.pool.shape[0])

    def floors(self, n: int) -> tuple[Floor | None, Floor | None]:
        """(N test images vs train statistics, N training images vs test statistics); None without a pool."""
        if self.test is None or self.test.pool is None:
            return None, None
        if self.test.pool.shape[0] < 2:
            return None, None
        vs_train = matched_floor(self.test.pool, self.train.frechet(), n, draws=self.floor_draws, seed=self.seed)
        vs_test = (matched_floor(self.train.pool, self.test.frechet(), n, draws=self.floor_draws, seed=self.seed)
                   if self.train.pool is not None and self.train.pool.shape[0] >= 2 else None)
        return vs_train, vs_test

    def meta(self, n: int) -> dict[str, Any]:
        fid_name, is_name = metric_names(self.extractor.name)
        out: dict[str, Any] = {
            "kind": self.kind, "fid_name": fid_name, "is_name": is_name, "feature_network": self.extractor.cache_key,
            "n": n, "reference_count": self.train.count, "reference_is": self.train.inception_score,
            "fid_bootstrap": self.bootstrap,
            "fid_delta_baseline_w": None if self.baseline is None else self.baseline[0],
        }
        if self.train.classes is not None:
            out["reference_classes"] = list(self.train.classes)
            out["reference"] = self.train.describe("the real images") + (
                " (their union, each class in its share of the split)" if len(self.train.classes) > 1 else "")
        if self.terms is not None:
            out["term_prob_name"] = (f"mean p(c_i | x) of each term's class under the {self.extractor.name} "
                                     "(± standard error over the samples)")
        if self.test is not None:
            out["test_count"] = self.test.count
            out["test_is"] = self.test.inception_score
            vs_train, vs_test = self.floors(n)
            if vs_train is not None:
                out.update(fid_floor=vs_train.value, fid_floor_std=vs_train.std, floor_count=n,
                           fid_floor_method=vs_train.method,
                           fid_floor_definition=vs_train.describe(self.test.describe("held-out test images"),
                                                                  self.train.describe("training split", brackets=True)))
            if vs_test is not None:
                out.update(fid_test_floor=vs_test.value, fid_test_floor_std=vs_test.std,
                           fid_test_floor_method=vs_test.method,
                           fid_test_floor_definition=vs_test.describe(self.train.describe("training images"),
                                                                      self.test.describe("test split", brackets=True)))
            # the old floor: the whole test split against the training split, at the test split's count
            whole = self.train.frechet().distance(self.test.mu, self.test.cov)
            out.update(fid_floor_whole_test=whole, fid_floor_whole_test_count=self.test.count)
        if self.near_copies is not None:
            out.update(self.near_copies.meta())
        if self.train.pool is not None:
            pool_count = self.train.pool.shape[0]
            pool_name = self.train.describe("training-split pool features")
            real = _prdc_real_definition(min(n, pool_count), pool_count,
                                         f"{pool_name} (a seeded random subset of the split)")
            out.update(prdc_k=self.prdc_k, density_k=self.density_k, prdc_real=real,
                       prdc_real_count=min(n, pool_count), prdc_std="standard error given the other set",
                       kid_subsets=self.kid_subsets, kid_subset_size=self.kid_subset_size(n),
                       kid_real=f"all {pool_count} {pool_name}",
                       kid_kernel="(x·y / d + 1)^3, unbiased MMD², std over subsets (ddof 0)")
        if self.train.class_count is not None:
            out["fid_per_class_classes"] = int((self.train.class_count >= 2).sum())
        return out


# -- vectors (2-D data) ------------------------------------------------------------------------------------


def _balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Weights 1 / (K · n_c) per point of class c: every class present carries the same mass."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[labels])


class _VectorSet:
    def __init__(self, scorer: VectorScorer) -> None:
        self.scorer = scorer
        self.x: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def add(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.x.append(x.detach().cpu().to(torch.float64).reshape(x.shape[0], -1))
        self.labels.append(torch.as_tensor(labels, dtype=torch.long).cpu())

    @property
    def points(self) -> tuple[np.ndarray, np.ndarray]:
        return torch.cat(self.x).numpy(), torch.cat(self.labels).numpy()

    def finish(self, w: float) -> dict[str, Any]:
        s = self.scorer
        x, labels = torch.cat(self.x), torch.cat(self.labels)
        row = _empty_row()
        overall, per_class = s.distances(x, labels)
        row.update(sliced_wasserstein=overall, sliced_wasserstein_per_class=per_class,
                   sliced_wasserstein_std=s.bootstrap_std(x, labels))
        if s.mixture is not None:
            density = GuidedDensity(s.mixture, w)
            row["log_density"], row["log_density_std"] = mean_log_density(density, x, labels)
            row["log_density_target"] = density.target_mean(labels)
        row.update(_prdc_fields(s.prdc_real(x.shape[0]), x, s.prdc_k, s.density_k))
        return row


class VectorScorer:
    """Sliced Wasserstein distance to held-out points, precision/recall and density/coverage against them (and
    the exact guided log-density on the 2-D testbed)."""

    kind = "vectors"

    def __init__(self, held_out: torch.Tensor, held_out_labels: torch.Tensor, num_classes: int, *,
                 train: torch.Tensor | None = None, train_labels: torch.Tensor | None = None,
                 mixture: GaussianMixture | None = None, projections: int = VECTOR_PROJECTIONS,
                 held_out_max: int = HELD_OUT_MAX, bootstrap: int = DEFAULT_BOOTSTRAP, floor_draws: int = FLOOR_DRAWS,
                 seed: int = 0, prdc_k: int = PRDC_K, density_k: int = DENSITY_K) -> None:
        held_out = torch.as_tensor(held_out, dtype=torch.float64).reshape(len(held_out), -1)
        held_out_labels = torch.as_tensor(held_out_labels, dtype=torch.long)
        if len(held_out) > held_out_max:  # cost grows with the reference; 10k points pin SW far below its spread
            keep = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(held_out))[:held_out_max]))
            held_out, held_out_labels = held_out[keep], held_out_labels[keep]
        self.held_out, self.held_out_labels = held_out, held_out_labels
        self.num_classes = num_classes
        self.train = None if train is None else torch.as_tensor(train, dtype=torch.float64).reshape(len(train), -1)
        self.train_labels = None if train_labels is None else torch.as_tensor(train_labels, dtype=torch.long)
        self.mixture = mixture
        self.prdc_k, self.density_k = prdc_k, density_k
        self._prdc_real: dict[int, torch.Tensor] = {}
        self.projections, self.bootstrap, self.floor_draws, self.seed = projections, bootstrap, floor_draws, seed
        self.directions = random_directions(self.held_out.shape[1], projections, seed=seed)
        # the held-out points projected on every direction and sorted once, for many 1-D distances
        self._all = SortedProjections(self.directions @ self.held_out.T,
                                      _balanced_weights(self.held_out_labels, num_classes))
        self._per_class = [SortedProjections(self.directions @ self.held_out[self.held_out_labels == c].T)
                           if bool((self.held_out_labels == c).any()) else None for c in range(num_classes)]

    def new_set(self) -> _VectorSet:
        return _VectorSet(self)

    def prdc_real(self, n: int) -> torch.Tensor:
        """The real points of PRDC at n samples: a seeded random n-subset of the held-out points, drawn once."""
        if n not in self._prdc_real:
            self._prdc_real[n] = torch.from_numpy(real_subset(self.held_out.numpy(), n, self.seed))
        return self._prdc_real[n]

    def _sw(self, x: torch.Tensor, weights: torch.Tensor | None, ref: SortedProjections) -> float:
        projected = self.directions @ x.to(torch.float64).T  # [L, n]
        power = wasserstein_1d_power_sorted(SortedProjections(projected, weights), ref, 2.0)
        return float(power.mean().clamp_min(0.0).sqrt())

    def distances(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float | None]]:
        """(SW_2 of all points vs the held-out points, both class-balanced; SW_2 per class, None if absent)."""
        overall = self._sw(x, _balanced_weights(labels, self.num_classes), self._all)
        per_class: list[float | None] = []
        for c in range(self.num_classes):
            mask = labels == c
            reference = self._per_class[c]
            per_class.append(self._sw(x[mask], None, reference) if reference is not None and bool(mask.any())
                             else None)
        return overall, per_class

    def bootstrap_std(self, x: torch.Tensor, labels: torch.Tensor) -> float | None:
        """Standard deviation of the overall SW_2 over bootstrap resamples of the points (within each class)."""
        if self.bootstrap < 2 or x.shape[0] < 2:
            return None
        rng = np.random.default_rng(self.seed)
        by_class = [np.flatnonzero(labels.numpy() == c) for c in range(self.num_classes)]
        values = []
        for _ in range(self.bootstrap):
            idx = np.concatenate([rng.choice(members, members.size) for members in by_class if members.size])
            values.append(self._sw(x[idx], _balanced_weights(labels[idx], self.num_classes), self._all))
        return float(np.std(values, ddof=1))

    def floor(self, n: int) -> tuple[float, float, list[float]] | None:
        """SW_2 of n class-balanced training points against the held-out points: (mean, std over ``floor_draws``
        random draws, per-class means): what independent real points of the same count score."""
        if self.train is None or self.train_labels is None:
            return None
        rng = np.random.default_rng(self.seed)
        wanted = torch.arange(n) % self.num_classes  # the samples' labels: i mod K
        by_class = [np.flatnonzero(self.train_labels.numpy() == c) for c in range(self.num_classes)]
        overall, per_class = [], []
        for _ in range(self.floor_draws):
            idx = np.empty(n, dtype=np.int64)
            for c in range(self.num_classes):
                slots = np.flatnonzero(wanted.numpy() == c)
                if slots.size:
                    idx[slots] = rng.choice(by_class[c], slots.size, replace=slots.size > by_class[c].size)
            o, pc = self.distances(self.train[idx], self.train_labels[idx])
            overall.append(o)
            per_class.append([np.nan if v is None else v for v in pc])
        return float(np.mean(overall)), float(np.std(overall, ddof=1)), np.nanmean(per_class, axis=0).tolist()

    def meta(self, n: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "n": n, "sw_name": "sliced Wasserstein SW_2 to held-out points",
            "sw_projections": self.projections, "sw_bootstrap": self.bootstrap, "held_out_count": len(self.held_out),
            "log_density_name": ("mean log p̃_w(x|c) under the exact guided target" if self.mixture is not None
                                 else None),
        }
        count = min(n, len(self.held_out))
        out.update(prdc_k=self.prdc_k, density_k=self.density_k, prdc_real_count=count,
                   prdc_real=_prdc_real_definition(count, len(self.held_out), "held-out points (raw coordinates)"),
                   prdc_std="standard error given the other set")
        floor = self.floor(n)
        if floor is not None:
            out.update(sw_floor=floor[0], sw_floor_std=floor[1], sw_floor_per_class=floor[2],
                       sw_floor_definition=(f"{n} class-balanced training points against the held-out points, "
                                            f"mean over {self.floor_draws} random draws"))
        return out


def row_fields() -> Sequence[str]:
    """Every metric field a sweep row carries."""
    return IMAGE_FIELDS + VECTOR_FIELDS + PRDC_FIELDS + TERM_FIELDS
