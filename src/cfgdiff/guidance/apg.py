"""Adaptive projected guidance, APG (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance
Scales in Diffusion Models", arXiv 2410.02416, Algorithm 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn
from cfgdiff.core.diffusion import x_from_eps
from cfgdiff.guidance.base import (
    TINY,
    GuidanceWeight,
    GuidedEpsFn,
    alpha_sigma_rows,
    check_finite,
    eval_cond_uncond,
    read_logsnr_if,
    row_dims,
)

# The values of the reference code circulated with the paper (η = 0 drops the parallel part, r bounds ‖Δ‖ in the
# data space, β < 0 is the negative momentum). r is an absolute L2 norm over a sample's dimensions, so it depends
# on the data's size: tune it per data set (2.5 was set for Stable Diffusion latents, 4×64×64).
RECOMMENDED_ETA = 0.0
RECOMMENDED_R = 2.5
RECOMMENDED_BETA = -0.75


class AdaptiveProjectedGuidance(GuidedEpsFn):
    """APG in the data prediction x̂ = (z - σ ε̂)/α (EDM's D; the paper's denoised D_θ):

        Δ_t = x̂_c - x̂_u = (σ/α)(ε_u - ε_c),           the guidance direction in data space,
        m_t = Δ_t + β m_{t-1},  m_{-1} = 0,             momentum (β = 0: m_t = Δ_t),
        m̃_t = m_t · min(1, r / ‖m_t‖),                   norm clamp (r = inf: none),
        m̃_∥ = (<m̃_t, x̂_c> / ‖x̂_c‖²) x̂_c,  m̃_⊥ = m̃_t - m̃_∥,
        x̂ = x̂_c + w (m̃_⊥ + η m̃_∥),                   ε̃ = ε_c - (α/σ) w (m̃_⊥ + η m̃_∥),

    with norms and inner products over each sample's own dimensions. η = 1, r = inf, β = 0 is plain CFG (to float
    rounding: the update is split into two parts and added back). The paper's scale is s = w + 1
    (D = D_c + (s - 1) update), so w is the paper's w.

    Space and state: the paper argues in D, where the part of Δ parallel to D_c changes the image's saturation and
    the orthogonal part its content, and where ‖Δ‖ has a meaning across noise levels; so the projection, the clamp
    and the momentum all act on x̂, not on ε (ε̂ and x̂ differ by the λ-dependent factor σ/α, so a running average
    of Δε would weigh steps differently). The momentum m is per-row state of one trajectory: with β ≠ 0 a sampler
    obtains a fresh buffer from ``start_trajectory`` (every cfgdiff sampler does), the buffer advances at every
    guided eps_fn evaluation (Heun: predictor and corrector), and unguided steps (outside an interval) leave it.
    """

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight, *, eta: float = RECOMMENDED_ETA, r: float = RECOMMENDED_R,
                 beta: float = RECOMMENDED_BETA) -> None:
        super().__init__(eps_fn, w)
        self.eta = check_finite("APG eta", eta)
        r = float(r)
        if not r > 0:  # also refuses nan; inf means no clamp
            raise ValueError(f"APG r (the norm bound) must be > 0 (inf for none), got {r:g}")
        self.r = r
        self.beta = check_finite("APG beta", beta)

    def params(self) -> dict[str, Any]:
        return {"eta": self.eta, "r": self.r, "beta": self.beta}

    def start_trajectory(self, logsnrs: Sequence[float]) -> EpsFn:
        """The eps_fn for one batch of trajectories: itself (β = 0, stateless) or one with a fresh momentum buffer."""
        return self if self.beta == 0.0 else _APGTrajectory(self)

    def guide(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float, *, z: torch.Tensor,
              logsnr: torch.Tensor, momentum: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̃, m_t): the formula of the class docstring, given the previous momentum m_{t-1} (None: 0)."""
        alpha, sigma = alpha_sigma_rows(logsnr, z)
        dims = row_dims(z)
        x_cond = x_from_eps(z=z, eps=eps_cond, alpha=alpha, sigma=sigma)
        diff = (sigma / alpha) * (eps_uncond - eps_cond)  # Δ = x̂_c - x̂_u
        if momentum is not None and self.beta != 0.0:
            diff = diff + self.beta * momentum
        state = diff
        if math.isfinite(self.r):
            norm = torch.linalg.vector_norm(diff, dim=dims, keepdim=True)
            diff = diff * torch.clamp(self.r / norm.clamp_min(TINY), max=1.0)
        along = (diff * x_cond).sum(dim=dims, keepdim=True) / (x_cond * x_cond).sum(dim=dims, keepdim=True).clamp_min(
            TINY)
        parallel = along * x_cond
        update = (diff - parallel) + self.eta * parallel
        return eps_cond - (alpha / sigma) * (w * update), state

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float, *, z: torch.Tensor,
                logsnr: torch.Tensor) -> torch.Tensor:
        if self.beta != 0.0:
            raise RuntimeError(f"APG with momentum beta = {self.beta:g} keeps per-trajectory state: sample through a "
                               "cfgdiff sampler, or call start_trajectory(logsnrs) once per batch of trajectories")
        return self.guide(eps_cond, eps_uncond, w, z=z, logsnr=logsnr, momentum=None)[0]


class _APGTrajectory:
    """APG over one batch of trajectories: holds the momentum buffer m (per row, in data space)."""

    def __init__(self, method: AdaptiveProjectedGuidance) -> None:
        self.method = method
        self.eps_fn = method.eps_fn
        self.num_classes = method.num_classes
        self.momentum: torch.Tensor | None = None

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        """ε̃ of APG with this trajectory's momentum (advanced at a guided step), λ on the host or None."""
        w = self.method.step_weight(logsnr, host_logsnr)
        if w is None:  # unguided: one call of B rows, momentum untouched
            return call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)
        eps_cond, eps_uncond = eval_cond_uncond(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)
        eps, self.momentum = self.method.guide(eps_cond, eps_uncond, w, z=z, logsnr=logsnr, momentum=self.momentum)
        return eps

    def eps_at(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
               host_logsnr: float) -> torch.Tensor:
        return self.guided_eps(z, logsnr, labels, float(host_logsnr))

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.guided_eps(z, logsnr, labels, read_logsnr_if(self.method.needs_logsnr(), logsnr))


def apg(eps_fn: EpsFn, w: GuidanceWeight, *, eta: float = RECOMMENDED_ETA, r: float = RECOMMENDED_R,
        beta: float = RECOMMENDED_BETA) -> AdaptiveProjectedGuidance:
    """APG (Sadat et al. 2024) at the paper's weight w: parallel weight η, norm bound r > 0 (inf: none), momentum β;
    returns an eps_fn (with β ≠ 0, one that samplers start per trajectory)."""
    return AdaptiveProjectedGuidance(eps_fn, w, eta=eta, r=r, beta=beta)
