"""Rescaled classifier-free guidance (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", arXiv 2305.08891, §3.4, Eq. 15-17)."""

from __future__ import annotations

from typing import Any

import torch

from cfgdiff.core.contract import EpsFn
from cfgdiff.core.diffusion import x_from_eps
from cfgdiff.guidance.base import (
    TINY,
    GuidanceWeight,
    GuidedEpsFn,
    alpha_sigma_rows,
    check_finite,
    combine_cfg,
    row_dims,
)

RECOMMENDED_PHI = 0.7  # Lin et al.: φ = 0.7 keeps the colour fix without plain-looking images


class RescaledCFG(GuidedEpsFn):
    """CFG whose data prediction is rescaled to the conditional prediction's standard deviation:

        x̂_cfg = x̂_c + w (x̂_c - x̂_u),   k = std(x̂_c) / std(x̂_cfg),
        x̂ = φ k x̂_cfg + (1 - φ) x̂_cfg = x̂_cfg (1 + φ (k - 1)),
        ε̃ = (z - α x̂)/σ = ε_cfg - (α/σ) φ (k - 1) x̂_cfg,

    with std over each sample's own dimensions. φ = 0 is plain CFG exactly (the correction is 0·finite);
    w = 0 gives k = 1, the conditional model (one call of B rows).

    Space: Lin et al. state it on the guided predictions x_pos, x_neg and x_cfg of their v-prediction model and
    argue about the image's contrast (over-exposure); the std is not affine, so the space matters. Here it acts on
    x̂ = (z - σ ε̂)/α, the data prediction, where the std measures the sample's contrast. (diffusers'
    ``guidance_rescale`` applies the same formula to the raw network output, which for an ε-model is ε.)
    """

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight, *, phi: float = RECOMMENDED_PHI) -> None:
        super().__init__(eps_fn, w)
        phi = check_finite("rescale phi", phi)
        if not 0.0 <= phi <= 1.0:
            raise ValueError(f"rescale phi must lie in [0, 1], got {phi:g}")
        self.phi = phi

    def params(self) -> dict[str, Any]:
        return {"phi": self.phi}

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float, *, z: torch.Tensor,
                logsnr: torch.Tensor) -> torch.Tensor:
        eps = combine_cfg(eps_cond, eps_uncond, w)
        alpha, sigma = alpha_sigma_rows(logsnr, z)
        x_cond = x_from_eps(z=z, eps=eps_cond, alpha=alpha, sigma=sigma)
        x_cfg = x_from_eps(z=z, eps=eps, alpha=alpha, sigma=sigma)
        dims = row_dims(z)
        std_cond = x_cond.std(dim=dims, keepdim=True, correction=0)
        std_cfg = x_cfg.std(dim=dims, keepdim=True, correction=0).clamp_min(TINY)
        factor = self.phi * (std_cond / std_cfg - 1.0)  # [B, 1, ...]
        return eps - (alpha / sigma) * factor * x_cfg


def rescaled_cfg(eps_fn: EpsFn, w: GuidanceWeight, *, phi: float = RECOMMENDED_PHI) -> RescaledCFG:
    """Rescaled CFG (Lin et al. 2023) at the paper's weight w with mixing factor φ in [0, 1]; returns an eps_fn."""
    return RescaledCFG(eps_fn, w, phi=phi)
