"""The Fréchet distance (FID) between feature statistics, and its bootstrap spread over samples.

    FID = ||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2})            (Heusel et al. 2017)

``frechet_distance`` is a pure function of two (mean, covariance) pairs, apart from feature extraction.
``bootstrap_fid`` resamples the sample features with replacement: the standard deviation of the resampled FIDs
is the spread of FID over redraws of N samples (the reference statistics held fixed).
``paired_bootstrap_difference`` resamples two paired sets together: the spread of a difference between rows.
``class_averaged_fid`` is the per-class FID averaged over classes: (1/K') Σ_c FID(samples of c, real of c).
``union_statistics`` gives (μ, Σ) of the union of several groups (e.g. some classes of a split) from each group's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch

FeatureStats = tuple[np.ndarray, np.ndarray]  # (mu [D], cov [D, D]) in float64

DEFAULT_BOOTSTRAP = 100  # bootstrap replicates B behind every FID spread


def _as_features(features: np.ndarray | torch.Tensor) -> np.ndarray:
    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    return feats.astype(np.float64).reshape(feats.shape[0], -1)


def feature_statistics(features: np.ndarray | torch.Tensor) -> FeatureStats:
    """(μ, Σ) of feature rows [N, D] in float64; Σ with the unbiased 1/(N-1) normalisation (N ≥ 2)."""
    feats = _as_features(features)
    if feats.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def union_statistics(mus: Sequence[np.ndarray] | np.ndarray, covs: Sequence[np.ndarray] | np.ndarray,
                     counts: Sequence[int] | np.ndarray) -> FeatureStats:
    """(μ, Σ) of the union of groups g of n_g rows with means μ_g and covariances Σ_g (1/(n_g - 1)), without the rows:

        N = Σ_g n_g,   μ = Σ_g n_g μ_g / N,   Σ = [Σ_g (n_g - 1) Σ_g + Σ_g n_g (μ_g - μ)(μ_g - μ)ᵀ] / (N - 1)

    (the law of total covariance with the unbiased normalisation): exactly ``feature_statistics`` of the
    concatenated rows. A group of one row adds its mean only (its Σ_g is not read); N ≥ 2 is required.
    """
    counts_arr = np.asarray(counts, dtype=np.int64).reshape(-1)
    total = int(counts_arr.sum())
    if total < 2 or (counts_arr < 0).any():
        raise ValueError(f"need at least 2 rows in all for a covariance (and no negative count), got {counts_arr}")
    used = np.flatnonzero(counts_arr > 0)
    group_mu = np.asarray(mus, np.float64)[used]  # [G, D]
    n = counts_arr[used].astype(np.float64)  # [G]
    mu = (n[:, None] * group_mu).sum(axis=0) / total
    offset = group_mu - mu  # [G, D]
    scatter = (n[:, None] * offset).T @ offset  # Σ_g n_g (μ_g - μ)(μ_g - μ)ᵀ
    for g, count in zip(used.tolist(), counts_arr[used].tolist(), strict=True):
        if count >= 2:
            scatter = scatter + (count - 1) * np.asarray(covs[g], np.float64)
    cov = scatter / (total - 1)
    return mu, 0.5 * (cov + cov.T)


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Σ^{1/2} of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    evals, evecs = np.linalg.eigh(cov)
    return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T


def _trace_sqrt_product(sqrt_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((Σ_a Σ_b)^{1/2}) from Σ_a^{1/2}: (Σ_a Σ_b)^{1/2} is similar to the symmetric PSD
    (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}, so the trace is Σ sqrt(max(eigenvalue, 0)): no complex arithmetic."""
    middle = sqrt_a @ cov_b @ sqrt_a
    middle = 0.5 * (middle + middle.T)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())


def _sqrtm_psd_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((Σ_a Σ_b)^{1/2}) for symmetric PSD Σ_a, Σ_b, stably (see ``_trace_sqrt_product``)."""
    return _trace_sqrt_product(_psd_sqrt(cov_a), cov_b)


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


class FrechetReference:
    """Fixed reference statistics (μ_r, Σ_r) with Σ_r^{1/2} computed once, for many FIDs against them.

    ``distance(μ, Σ)`` = ||μ - μ_r||² + Tr(Σ) + Tr(Σ_r) - 2 Tr((Σ_r^{1/2} Σ Σ_r^{1/2})^{1/2}): the same value as
    ``frechet_distance(μ, Σ, μ_r, Σ_r)``, one symmetric eigenvalue problem per call instead of two.
    """

    def __init__(self, mu: np.ndarray, cov: np.ndarray) -> None:
        self.mu = np.atleast_1d(np.asarray(mu, np.float64))
        self.cov = np.atleast_2d(np.asarray(cov, np.float64))
        self.sqrt_cov = _psd_sqrt(self.cov)
        self.trace_cov = float(np.trace(self.cov))

    def distance(self, mu: np.ndarray, cov: np.ndarray) -> float:
        diff = np.asarray(mu, np.float64) - self.mu
        value = float(diff @ diff + np.trace(cov) + self.trace_cov - 2.0 * _trace_sqrt_product(self.sqrt_cov, cov))
        return max(value, 0.0)

    def of_features(self, features: np.ndarray | torch.Tensor) -> float:
        """FID of feature rows [N, D] against the reference."""
        return self.distance(*feature_statistics(features))


class _Resampler:
    """Weighted statistics of feature rows [N, D] under bootstrap multiplicities c (Σ c = N), without copies:
    μ* = Σ c_i f_i / N and Σ* = Σ c_i (f_i - μ*)(f_i - μ*)ᵀ / (N - 1), from rows centred once."""

    def __init__(self, features: np.ndarray | torch.Tensor) -> None:
        feats = _as_features(features)
        if feats.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors for a bootstrap, got {feats.shape[0]}")
        self.n = feats.shape[0]
        self.mean = feats.mean(axis=0)
        self.centred = feats - self.mean  # centring first keeps the weighted covariance well conditioned

    def statistics(self, counts: np.ndarray) -> FeatureStats:
        shift = counts @ self.centred / self.n  # μ* - μ̂  [D]
        cov = ((self.centred * counts[:, None]).T @ self.centred - self.n * np.outer(shift, shift)) / (self.n - 1)
        return self.mean + shift, 0.5 * (cov + cov.T)


def _check_draws(draws: int) -> None:
    if draws < 2:
        raise ValueError(f"need at least 2 bootstrap draws, got {draws}")


def bootstrap_fid(
    features: np.ndarray | torch.Tensor,
    references: Sequence[FrechetReference],
    *,
    draws: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> np.ndarray:
    """FIDs of ``draws`` bootstrap resamples of the feature rows [N, D] against each reference: [draws, R].

    A resample draws N rows with replacement (multiplicities c ~ Multinomial(N, 1/N)); its statistics are the
    weighted ones (``_Resampler``), so nothing is copied and each replicate costs O(N D²) plus one eigenvalue
    problem per reference. The standard deviation of a column estimates FID's standard deviation over
    independent sets of N samples (Efron's bootstrap), the reference held fixed. Seeded: the same features and
    seed give the same replicates.
    """
    _check_draws(draws)
    resampler = _Resampler(features)
    rng = np.random.default_rng(seed)
    out = np.empty((draws, len(references)), dtype=np.float64)
    for b in range(draws):
        mu, cov = resampler.statistics(rng.multinomial(resampler.n, np.full(resampler.n, 1.0 / resampler.n)))
        for r, ref in enumerate(references):
            out[b, r] = ref.distance(mu, cov)
    return out


def paired_bootstrap_difference(
    features_a: np.ndarray | torch.Tensor,
    features_b: np.ndarray | torch.Tensor,
    reference: FrechetReference,
    *,
    draws: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> np.ndarray:
    """FID(a*) - FID(b*) over ``draws`` *paired* bootstrap resamples: [draws].

    Row i of a and row i of b are paired (in a sweep: the same sample index, hence the same initial noise at
    two guidance weights), so each replicate draws one set of multiplicities and applies it to both. The
    standard deviation is the spread of the difference itself, smaller than √(s_a² + s_b²) when the two FIDs
    move together (common random numbers).
    """
    _check_draws(draws)
    res_a, res_b = _Resampler(features_a), _Resampler(features_b)
    if res_a.n != res_b.n:
        raise ValueError(f"paired sets need the same number of rows, got {res_a.n} and {res_b.n}")
    rng = np.random.default_rng(seed)
    out = np.empty(draws, dtype=np.float64)
    for b in range(draws):
        counts = rng.multinomial(res_a.n, np.full(res_a.n, 1.0 / res_a.n)).astype(np.float64)
        out[b] = reference.distance(*res_a.statistics(counts)) - reference.distance(*res_b.statistics(counts))
    return out


def fid_with_spread(
    features: np.ndarray | torch.Tensor,
    references: Sequence[FrechetReference],
    *,
    draws: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> list[tuple[float, float | None]]:
    """(FID, bootstrap std) of the feature rows against each reference; std None when ``draws`` < 2."""
    mu, cov = feature_statistics(features)
    values = [ref.distance(mu, cov) for ref in references]
    if draws < 2:
        return [(v, None) for v in values]
    spread = bootstrap_fid(features, references, draws=draws, seed=seed).std(axis=0, ddof=1)
    return [(v, float(s)) for v, s in zip(values, spread, strict=True)]


def class_averaged_fid(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                       references: Sequence[FrechetReference | None]) -> float | None:
    """(1/K') Σ_c FID(features of the samples labelled c, ``references[c]``), over the K' classes that have a
    reference and at least 2 samples (None when there is none): how far each class's samples are from that class's
    real images, which the overall FID does not see when classes are swapped or mixed."""
    feats = _as_features(features)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    values = [ref.of_features(feats[labels == c]) for c, ref in enumerate(references)
              if ref is not None and int((labels == c).sum()) >= 2]
    return float(np.mean(values)) if values else None
