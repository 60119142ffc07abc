"""LinearAG (Castillo et al. 2023, "Adaptive Guidance: Training-free Acceleration of Conditional Diffusion Models",
arXiv 2312.12487, Sec. 5): late steps replace the unconditional evaluation by an affine estimate from past ones."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn, step_logsnr
from cfgdiff.guidance.base import (
    GuidanceWeight,
    GuidedEpsFn,
    check_unit_share,
    combine_cfg,
    eval_cond_uncond,
    read_logsnr_if,
)

RECOMMENDED_FULL_FRACTION = 0.5  # Castillo et al. find the unconditional pass most redundant in the second half


def check_full_fraction(full_fraction: float) -> float:
    """f as a float in (0, 1] (ValueError otherwise)."""
    return check_unit_share(full_fraction, "linear-ag full_fraction", "1 = every step in full")


class LinearAG(GuidedEpsFn):
    """CFG, ε̃ = ε_c + w (ε_c - ε_u), with ε_u replaced on the late steps by the affine estimate

        ε̂_u,t = ε_c,t - ε_c,s + ε_u,s = ε_c,t - Δ_s,     Δ_s = ε_c,s - ε_u,s,

    s the trajectory's last evaluation where both were computed: the past guidance difference carried forward.
    Castillo et al. (LinearAG) write ε_u,t as an affine combination of the current ε_c and past ε_c, ε_u whose
    coefficients they fit offline over a data set; this is the fixed member of that family with coefficients
    (1, -1, 1) (FastVideo's stale-unconditional reuse, hao-ai-lab/FastVideo#1372). A per-sample least-squares fit
    of the three coefficients on the early steps was tried and extrapolated worse on the exact mixture than this
    fixed form (docs/guidance.md), so nothing is fitted.

    The first K = ⌈f S⌉ steps of the sampler's S-step grid are computed in full (ONE call of 2B rows); later guided
    evaluations cost B rows (ε_c alone). The split is a log-SNR threshold on the grid the sampler passes to
    ``start_trajectory`` (every cfgdiff sampler does): evaluations at λ < grid[K] are full. An evaluation past the
    threshold with no computed Δ yet (K = 0, or after an unguided step) is computed in full. Unguided evaluations
    (w = 0, outside an interval) are B rows and drop Δ. f = 1 computes every step: plain CFG exactly.
    """

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight, *,
                 full_fraction: float = RECOMMENDED_FULL_FRACTION) -> None:
        super().__init__(eps_fn, w)
        self.full_fraction = check_full_fraction(full_fraction)
        self.full_below: float | None = None  # this trajectory's λ threshold (start_trajectory)
        self.difference: torch.Tensor | None = None  # Δ_s = ε_c,s - ε_u,s of the last full evaluation, per row

    def params(self) -> dict[str, Any]:
        return {"full_fraction": self.full_fraction}

    def start_trajectory(self, logsnrs: Sequence[float]) -> EpsFn:
        """The eps_fn of one batch of trajectories over ``logsnrs``: itself at f = 1, else a copy with fresh state."""
        if self.full_fraction >= 1.0:
            return self
        grid = [float(v) for v in logsnrs]
        steps = len(grid) - 1
        k = math.ceil(self.full_fraction * steps)
        trajectory = copy.copy(self)
        trajectory.full_below = grid[k] if k < steps else math.inf
        trajectory.difference = None
        return trajectory

    def needs_logsnr(self) -> bool:
        return callable(self.w) or self.full_below is not None

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        w = self.step_weight(logsnr, host_logsnr)
        if w is None:  # unguided: B rows; no computed difference to carry past it
            self.difference = None
            return call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)
        if self.full_fraction < 1.0 and self.full_below is None:
            raise RuntimeError("linear-ag estimates late steps from the early steps of a trajectory: sample through a "
                               "cfgdiff sampler, or call start_trajectory(logsnrs) first (or pass full_fraction=1)")
        estimate = (self.full_below is not None and step_logsnr(logsnr, host_logsnr) >= self.full_below
                    and self.difference is not None and self.difference.shape == z.shape)
        if estimate:
            assert self.difference is not None
            eps_cond = call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)  # B rows
            return combine_cfg(eps_cond, eps_cond - self.difference, w)  # ε̂_u = ε_c - Δ_s
        eps_cond, eps_uncond = eval_cond_uncond(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)  # 2B rows
        if self.full_below is not None:
            self.difference = eps_cond - eps_uncond
        return combine_cfg(eps_cond, eps_uncond, w)

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float, *, z: torch.Tensor,
                logsnr: torch.Tensor) -> torch.Tensor:
        return combine_cfg(eps_cond, eps_uncond, w)

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.guided_eps(z, logsnr, labels, read_logsnr_if(self.needs_logsnr(), logsnr))


def linear_ag(eps_fn: EpsFn, w: GuidanceWeight, *, full_fraction: float = RECOMMENDED_FULL_FRACTION) -> LinearAG:
    """LinearAG in the spirit of Castillo et al. 2023 at the paper's weight w: the first ⌈f S⌉ grid steps in full,
    then ε̂_u = ε_c - Δ (the last computed guidance difference), B rows a step; f in (0, 1], 1 = plain CFG."""
    return LinearAG(eps_fn, w, full_fraction=full_fraction)
