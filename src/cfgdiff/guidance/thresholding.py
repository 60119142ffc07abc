"""Dynamic thresholding of the guided data prediction (Saharia et al. 2022, Imagen, arXiv 2205.11487, §2.3)."""

from __future__ import annotations

import math
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn
from cfgdiff.core.diffusion import x_from_eps
from cfgdiff.guidance.base import (
    GuidanceWeight,
    GuidedEpsFn,
    alpha_sigma_rows,
    check_finite,
    combine_cfg,
    eval_cond_uncond,
)

RECOMMENDED_PERCENTILE = 99.5  # Imagen's p (the percentile of |x̂| per sample)


class DynamicThresholding(GuidedEpsFn):
    """CFG followed by Imagen's dynamic thresholding of x̂, with the data bound b (1 for images in [-1, 1]):

        x̂ = (z - σ ε_cfg)/α,   s = max(b, quantile_p |x̂|)   (per sample),
        x̂_t = clip(x̂, -s, s) · b/s,   ε̃ = (z - α x̂_t)/σ = ε_cfg - (α/σ)(x̂_t - x̂).

    Where every |x̂| <= b already, s = b and x̂_t = x̂: plain CFG exactly. Space: Imagen thresholds the predicted
    image x̂_0 at every sampling step, which is our x̂. With p = 100 nothing is clipped: a prediction beyond the
    bound is shrunk as a whole until its largest |x̂| is b. Unlike the other methods, thresholding also acts at w = 0
    (Imagen applies it at every step): w = 0 costs one call of B rows and thresholds the conditional x̂; only
    outside a guidance interval is the step the plain conditional one.
    """

    zero_is_conditional = False

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight, *, percentile: float = RECOMMENDED_PERCENTILE,
                 bound: float = 1.0) -> None:
        super().__init__(eps_fn, w)
        percentile = check_finite("threshold percentile", percentile)
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"threshold percentile must lie in (0, 100], got {percentile:g}")
        bound = float(bound)
        if not (bound > 0 and math.isfinite(bound)):
            raise ValueError(f"threshold bound must be a positive number, got {bound:g}")
        self.percentile = percentile
        self.bound = bound

    def params(self) -> dict[str, Any]:
        return {"percentile": self.percentile, "bound": self.bound}

    def threshold(self, eps: torch.Tensor, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        """ε whose x̂ is dynamically thresholded (the formula in the class docstring)."""
        alpha, sigma = alpha_sigma_rows(logsnr, z)
        x = x_from_eps(z=z, eps=eps, alpha=alpha, sigma=sigma)
        flat = x.abs().flatten(1)
        s = torch.quantile(flat.to(torch.float64), self.percentile / 100.0, dim=1).clamp_min(self.bound)
        s = s.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        x_t = torch.minimum(torch.maximum(x, -s), s) * (self.bound / s)
        return eps - (alpha / sigma) * (x_t - x)

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float, *, z: torch.Tensor,
                logsnr: torch.Tensor) -> torch.Tensor:
        return self.threshold(combine_cfg(eps_cond, eps_uncond, w), z, logsnr)

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        w = self.step_weight(logsnr, host_logsnr)
        if w is None:  # outside the interval: plain conditional, B rows
            return call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)
        if w == 0.0:  # B rows
            return self.threshold(call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr), z, logsnr)
        eps_cond, eps_uncond = eval_cond_uncond(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)  # 2B rows
        return self.combine(eps_cond, eps_uncond, w, z=z, logsnr=logsnr)


def dynamic_thresholding(eps_fn: EpsFn, w: GuidanceWeight, *, percentile: float = RECOMMENDED_PERCENTILE,
                         bound: float = 1.0) -> DynamicThresholding:
    """CFG at weight w with Imagen's dynamic thresholding of x̂ at percentile p in (0, 100] and data bound b."""
    return DynamicThresholding(eps_fn, w, percentile=percentile, bound=bound)
