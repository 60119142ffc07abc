"""The sliced Wasserstein distance between two point sets (weighted empirical measures) in D dimensions.

    SW_p(μ, ν) = ( E_θ W_p^p(θ#μ, θ#ν) )^{1/p},   θ uniform on the unit sphere S^{D-1}

(Rabin et al. 2011; Bonneel et al. 2015), with the expectation over L seeded random directions θ_l (Gaussian
vectors normalised) and each 1-D distance computed exactly: for measures on the line with quantile functions
F⁻¹, G⁻¹, W_p^p = ∫_0^1 |F⁻¹(t) - G⁻¹(t)|^p dt, and for empirical measures both quantile functions are piecewise
constant between the cumulative weights, so the integral is a finite sum over the merged breakpoints. Sets of
different sizes and weighted points (e.g. class-balanced) need no resampling.

Identities (tested): SW(X, X) = 0; SW is symmetric; SW(aX, aY) = |a| SW(X, Y); a translation by t gives
W_p(θ#X, θ#(X + t)) = |θ·t| on every direction, so SW_p(X, X + t) = (mean_l |θ_l·t|^p)^{1/p}, which for p = 2
tends to |t|/√D over the sphere; in one dimension SW_p is W_p.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_PROJECTIONS = 256


def random_directions(dim: int, count: int = DEFAULT_PROJECTIONS, *, seed: int = 0) -> torch.Tensor:
    """``count`` unit vectors [L, D] uniform on S^{D-1} (normalised Gaussians), float64, from a seeded stream."""
    if dim < 1 or count < 1:
        raise ValueError(f"need dim >= 1 and count >= 1, got dim = {dim}, count = {count}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(count, dim, generator=g, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def _normalised_weights(weights: torch.Tensor | np.ndarray | None, n: int) -> torch.Tensor:
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if w.shape[0] != n or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
    return w / w.sum()


class SortedProjections:
    """Rows of 1-D values [L, n] sorted, with their cumulative weights (the empirical CDF at each sorted value).

    Sort a fixed set once (e.g. held-out points) and reuse it against many sample sets."""

    def __init__(self, values: torch.Tensor, weights: torch.Tensor | np.ndarray | None = None) -> None:
        values = torch.as_tensor(values, dtype=torch.float64)
        if values.ndim != 2 or values.shape[1] < 1:
            raise ValueError(f"values must be [L, n] with n >= 1, got shape {tuple(values.shape)}")
        w = _normalised_weights(weights, values.shape[1])
        self.sorted, order = values.sort(dim=1)  # [L, n]
        self.cdf = w[order].cumsum(dim=1).clamp_max(1.0).contiguous()  # [L, n]
        self.cdf[:, -1] = 1.0  # exactly 1 at the last point, whatever the round-off of the sum


def wasserstein_1d_power_sorted(u: SortedProjections, v: SortedProjections, p: float = 2.0) -> torch.Tensor:
    """W_p^p between two sorted weighted empirical measures per row: [L], exactly (see the module docstring).

    The breakpoints of both CDFs are merged by rank (u's k-th breakpoint lands at k + #(v's breakpoints below
    it)); on the interval ending at merged position j, F⁻¹ is u's point number #(u's breakpoints before j)
    and G⁻¹ likewise, so one small ``searchsorted`` and two running counts replace any sort of n + m values.
    """
    if u.sorted.shape[0] != v.sorted.shape[0]:
        raise ValueError(f"{u.sorted.shape[0]} and {v.sorted.shape[0]} rows of projections")
    rows, n = u.sorted.shape
    m = v.sorted.shape[1]
    pos_u = torch.arange(n)[None, :] + torch.searchsorted(v.cdf, u.cdf, right=False)  # [L, n] merged positions
    from_u = torch.zeros(rows, n + m, dtype=torch.bool)
    from_u.scatter_(1, pos_u, True)
    before_u = from_u.cumsum(dim=1) - from_u.long()  # u-breakpoints at merged positions < j
    before_v = torch.arange(n + m)[None, :] - before_u  # v-breakpoints at merged positions < j
    iu, iv = before_u.clamp_max(n - 1), before_v.clamp_max(m - 1)  # F⁻¹ and G⁻¹ on the interval ending at j
    breaks = torch.where(from_u, u.cdf.gather(1, iu), v.cdf.gather(1, iv))  # [L, n + m] merged breakpoints
    lower = torch.cat([torch.zeros(rows, 1, dtype=torch.float64), breaks[:, :-1]], dim=1)
    lengths = (breaks - lower).clamp_min(0.0)  # interval lengths of t ∈ (lower, upper]
    gap = (u.sorted.gather(1, iu) - v.sorted.gather(1, iv)).abs()
    return (lengths * gap.pow(p)).sum(dim=1)


def wasserstein_1d_power(u: torch.Tensor, v: torch.Tensor, u_weights: torch.Tensor | None = None,
                         v_weights: torch.Tensor | None = None, p: float = 2.0) -> torch.Tensor:
    """W_p^p between the weighted empirical measures of the rows of u [L, n] and v [L, m]: [L], exactly.

    Each row is one 1-D problem; ``u_weights`` [n] / ``v_weights`` [m] (default uniform) are shared by all rows.
    """
    return wasserstein_1d_power_sorted(SortedProjections(u, u_weights), SortedProjections(v, v_weights), p)


def sliced_wasserstein(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    p: float = 2.0,
    directions: torch.Tensor | None = None,
    projections: int = DEFAULT_PROJECTIONS,
    seed: int = 0,
    x_weights: torch.Tensor | np.ndarray | None = None,
    y_weights: torch.Tensor | np.ndarray | None = None,
) -> float:
    """SW_p between the points x [n, D] and y [m, D] (optionally weighted), over ``directions`` [L, D] or
    ``projections`` random ones drawn with ``seed`` (``random_directions``)."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(len(x), -1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(len(y), -1)
    if x.shape[0] < 1 or y.shape[0] < 1 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two non-empty point sets of one dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    theta = directions if directions is not None else random_directions(x.shape[1], projections, seed=seed)
    theta = theta.to(torch.float64)
    power = wasserstein_1d_power(theta @ x.T, theta @ y.T, x_weights, y_weights, p)  # [L]
    return float(power.mean().clamp_min(0.0) ** (1.0 / p))
