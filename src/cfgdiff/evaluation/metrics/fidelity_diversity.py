"""Fidelity and diversity measured apart: k-NN precision/recall, density/coverage, and KID.

Real features R [M, D], sample ("fake") features F [N, D]; NND_k(x) is the distance from x to its k-th nearest
neighbour *within its own set* (the point itself excluded), B(x, r) the open ball {y : ||y - x|| < r}.

* Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-2; k = 3 by default):

      precision = (1/N) Σ_j 1[∃ i: F_j ∈ B(R_i, NND_k(R_i))]     (samples on the real manifold: fidelity)
      recall    = (1/M) Σ_i 1[∃ j: R_i ∈ B(F_j, NND_k(F_j))]     (real points on the samples' manifold: diversity)

* Density and coverage (Naeem et al. 2020, eq. 3-4; k = 5 by default):

      density  = 1/(k N) Σ_j Σ_i 1[F_j ∈ B(R_i, NND_k(R_i))]      (E = 1 when F and R are i.i.d. of one law)
      coverage = (1/M) Σ_i 1[∃ j: F_j ∈ B(R_i, NND_k(R_i))]

  These are ``prdc.compute_prdc`` (Naeem et al.'s code) to the letter, strict inequalities included, except that
  the distances are computed in blocks of rows (``torch.cdist``) keeping only the k-th neighbour radii, the counts
  and the nearest distances: memory O(block · max(M, N)), so 10 000 against 10 000 fits easily.
  Each value comes with a standard error *given the other set* (its balls held fixed): precision and coverage/recall
  are means of indicators (binomial, sqrt(p (1 - p) / count)), density a mean of per-sample counts / k (their std
  / sqrt(N)). It leaves out the variation of the balls themselves, so it is a lower bound on the spread over
  redraws of both sets.

* KID (Bińkowski et al. 2018): the unbiased estimate of MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / D + 1)³,

      MMD²_u = 1/(m(m-1)) Σ_{i≠j} [k(f_i, f_j) + k(r_i, r_j)] - 2/m² Σ_{i,j} k(f_i, r_j),

  on ``subsets`` pairs of random subsets of m = ``subset_size`` samples and m real points (without replacement);
  KID is the mean over the subsets and ``kid_std`` their standard deviation (ddof = 0). The subsets are drawn as
  torch-fidelity draws them (``np.random.RandomState(seed)``, samples' subset first, then the real one), so with the
  same seed the value is torch-fidelity's ``kid_features_to_metric``. When m equals a set's size every subset of
  that set is all of it, and the std then only reflects the other set's subsets (an underestimate).

This module imports neither training nor the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PRDC_K = 3  # k of precision and recall (Kynkäänniemi et al. 2019)
DENSITY_K = 5  # k of density and coverage (Naeem et al. 2020)
KID_SUBSETS = 100  # subsets averaged in KID (torch-fidelity's default)
KID_SUBSET_SIZE = 1000  # largest subset size in KID (torch-fidelity's default; min(1000, N) is used)
DISTANCE_BLOCK = 1024  # rows of a distance block: memory = block · (other set's size) · 8 bytes


def _as_torch(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [len(a), len(b)] by ||a||² + ||b||² - 2 a·b, as sklearn's ``pairwise_distances``."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_min_(0.0).sqrt_()


def kth_neighbour_radii(x: np.ndarray | torch.Tensor, ks: tuple[int, ...], *,
                        block: int = DISTANCE_BLOCK) -> dict[int, torch.Tensor]:
    """NND_k(x_i) for every k in ``ks``: the (k+1)-th smallest distance from x_i to the rows of x (the first is x_i
    itself, at 0), computed ``block`` rows at a time. Returns k -> radii [N] (float64)."""
    x = _as_torch(x)
    kmax = max(ks)
    if x.shape[0] <= kmax:
        raise ValueError(f"k = {kmax} nearest neighbours need more than {kmax} points, got {x.shape[0]}")
    out = {k: torch.empty(x.shape[0], dtype=torch.float64) for k in ks}
    for start in range(0, x.shape[0], block):
        nearest = torch.topk(_cdist(x[start:start + block], x), kmax + 1, dim=1, largest=False).values  # sorted
        for k in ks:
            out[k][start:start + block] = nearest[:, k]
    return out


@dataclass(frozen=True)
class PRDC:
    """Precision, recall, density, coverage and their standard errors given the other set (module docstring)."""

    precision: float
    recall: float
    density: float
    coverage: float
    precision_std: float
    recall_std: float
    density_std: float
    coverage_std: float
    k: int  # precision/recall's k
    density_k: int  # density/coverage's k


def _binomial_se(p: float, count: int) -> float:
    return float(np.sqrt(max(p * (1.0 - p), 0.0) / count))


def prdc(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, *, k: int = PRDC_K,
         density_k: int = DENSITY_K, block: int = DISTANCE_BLOCK) -> PRDC:
    """Precision and recall (k-NN balls of ``k``) and density and coverage (of ``density_k``) of the samples
    ``fake`` [N, D] against ``real`` [M, D], in blocks of ``block`` rows (see the module docstring)."""
    real, fake = _as_torch(real), _as_torch(fake)
    ks = tuple(sorted({k, density_k}))
    real_radii = kth_neighbour_radii(real, ks, block=block)
    fake_radii = kth_neighbour_radii(fake, (k,), block=block)[k]
    r_pr, r_dc = real_radii[k], real_radii[density_k]
    in_real = torch.empty(fake.shape[0], dtype=torch.bool)  # sample j inside some real k-ball (precision)
    counts = torch.empty(fake.shape[0], dtype=torch.float64)  # real density_k-balls holding sample j (density)
    for start in range(0, fake.shape[0], block):
        d = _cdist(fake[start:start + block], real)  # [b, M]
        in_real[start:start + block] = (d < r_pr[None, :]).any(1)
        counts[start:start + block] = (d < r_dc[None, :]).sum(1).to(torch.float64)
    in_fake = torch.empty(real.shape[0], dtype=torch.bool)  # real i inside some sample's k-ball (recall)
    covered = torch.empty(real.shape[0], dtype=torch.bool)  # the nearest sample inside real i's ball (coverage)
    for start in range(0, real.shape[0], block):
        d = _cdist(real[start:start + block], fake)  # [b, N]
        in_fake[start:start + block] = (d < fake_radii[None, :]).any(1)
        covered[start:start + block] = d.min(1).values < r_dc[start:start + block]
    n, m = fake.shape[0], real.shape[0]
    precision, recall = float(in_real.double().mean()), float(in_fake.double().mean())
    per_sample = counts / density_k
    coverage = float(covered.double().mean())
    return PRDC(precision, recall, float(per_sample.mean()), coverage,
                precision_std=_binomial_se(precision, n), recall_std=_binomial_se(recall, m),
                density_std=float(per_sample.std(unbiased=True) / np.sqrt(n)) if n > 1 else 0.0,
                coverage_std=_binomial_se(coverage, m), k=k, density_k=density_k)


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """MMD²_u of two sets of m rows each under k(a, b) = (a·b / D + 1)³ (module docstring)."""
    m, d = x.shape
    if y.shape[0] != m or m < 2:
        raise ValueError(f"need two sets of the same size m >= 2, got {x.shape[0]} and {y.shape[0]}")
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(fake: np.ndarray | torch.Tensor, real: np.ndarray | torch.Tensor, *, subsets: int = KID_SUBSETS,
        subset_size: int | None = None, seed: int = 0) -> tuple[float, float, int]:
    """(KID, its std over the subsets, the subset size used): the mean of MMD²_u over ``subsets`` seeded pairs of
    subsets of ``subset_size`` rows (default min(1000, N, M)), drawn as torch-fidelity draws them."""
    fake = np.asarray(fake, np.float64)
    real = np.asarray(real, np.float64)
    size = min(KID_SUBSET_SIZE, fake.shape[0], real.shape[0]) if subset_size is None else subset_size
    if size > min(fake.shape[0], real.shape[0]):
        raise ValueError(f"KID subsets of {size} from {fake.shape[0]} samples and {real.shape[0]} real points")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        f = fake[rng.choice(fake.shape[0], size, replace=False)]
        r = real[rng.choice(real.shape[0], size, replace=False)]
        values[s] = polynomial_mmd2_unbiased(f, r)
    return float(values.mean()), float(values.std()), size


def real_subset(pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The real set of a sweep's PRDC: a seeded random subset of n rows of ``pool`` (all of it when n >= its size),
    in pool order; the same for every w of a sweep, so rows differ by their samples alone."""
    if n >= pool.shape[0]:
        return pool
    keep = np.sort(np.random.default_rng(seed).permutation(pool.shape[0])[:n])
    return pool[keep]
