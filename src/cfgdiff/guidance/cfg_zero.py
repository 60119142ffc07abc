"""CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models",
arXiv 2503.18886): the optimised scale s* and zero-init of the first steps."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn, step_logsnr
from cfgdiff.guidance.base import (
    TINY,
    GuidanceWeight,
    GuidedEpsFn,
    alpha_sigma_rows,
    eval_cond_uncond,
    row_dims,
)

RECOMMENDED_ZERO_INIT_STEPS = 1  # Fan et al. zero the first step(s); diffusers' default is 1


class CFGZeroStar(GuidedEpsFn):
    """CFG-Zero* in our ε terms. Fan et al. work with a flow-matching velocity v = ε - x (x_t = (1 - t) x + t ε);
    our z maps onto it as x_rf = z/(α + σ), t = σ/(α + σ), and v = ε̂ - x̂ = ((α + σ) ε̂ - z)/α. Their rule, with their
    scale ω = w + 1:

        s* = <v_c, v_u> / ‖v_u‖²   (per sample),     v = (1 - ω) s* v_u + ω v_c = v_c + w (v_c - s* v_u),

    mapped back through ε̂ = (α v + z)/(α + σ):

        ε̃ = ε_c + w [(ε_c - s* ε_u) - (1 - s*) z/(α + σ)].

    s* = 1 (``optimized_scale=False``) is plain CFG exactly. The scaled combination's weights do not sum to 1, so the
    space matters: s* is taken in v, as in the paper (diffusers applies it to whatever the network predicts).

    Zero-init: the first K points of the sampler's λ grid return v = 0, i.e. ε̂ = x̂ = z/(α + σ), with no network
    call (the flow does not move in x_rf; DDIM then gives z' = z (α' + σ')/(α + σ)). K is counted on the grid the
    sampler passes to ``start_trajectory`` (every cfgdiff sampler does), which turns it into a log-SNR threshold:
    evaluations at λ below grid[K] are zeroed (Heun's corrector of step K-1 evaluates at grid[K] and is not).
    Zero-init belongs to guided steps: where the step is unguided (w = 0, or outside a guidance interval) it is the
    plain conditional one. Called without a trajectory and K > 0, the wrapper refuses.
    """

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight, *, zero_init_steps: int = RECOMMENDED_ZERO_INIT_STEPS,
                 optimized_scale: bool = True) -> None:
        super().__init__(eps_fn, w)
        if isinstance(zero_init_steps, bool) or int(zero_init_steps) != zero_init_steps or zero_init_steps < 0:
            raise ValueError(f"CFG-Zero* zero_init_steps must be an integer >= 0, got {zero_init_steps}")
        self.zero_init_steps = int(zero_init_steps)
        self.optimized_scale = bool(optimized_scale)
        self.zero_init_below: float | None = None  # λ threshold of this trajectory's zero-init (start_trajectory)

    def params(self) -> dict[str, Any]:
        return {"zero_init_steps": self.zero_init_steps, "optimized_scale": self.optimized_scale}

    def start_trajectory(self, logsnrs: Sequence[float]) -> EpsFn:
        """The eps_fn for one batch of trajectories over the grid ``logsnrs``: zero-init below grid[K]."""
        if self.zero_init_steps == 0:
            return self
        trajectory = copy.copy(self)
        grid = [float(v) for v in logsnrs]
        trajectory.zero_init_below = grid[self.zero_init_steps] if self.zero_init_steps < len(grid) else math.inf
        return trajectory

    def needs_logsnr(self) -> bool:
        return callable(self.w) or (self.zero_init_steps > 0 and self.zero_init_below is not None)

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        w = self.step_weight(logsnr, host_logsnr)
        if w is None:
            return call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)  # unguided: B rows
        if self.zero_init_steps > 0:
            if self.zero_init_below is None:
                raise RuntimeError("CFG-Zero* zero-init counts steps of a trajectory: sample through a cfgdiff "
                                   "sampler, or call start_trajectory(logsnrs) first (or pass zero_init_steps=0)")
            if step_logsnr(logsnr, host_logsnr) < self.zero_init_below:
                alpha, sigma = alpha_sigma_rows(logsnr, z)
                return z / (alpha + sigma)  # v = 0: ε̂ = x̂ = z/(α + σ), no network call
        eps_cond, eps_uncond = eval_cond_uncond(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)
        return self.combine(eps_cond, eps_uncond, w, z=z, logsnr=logsnr)

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float, *, z: torch.Tensor,
                logsnr: torch.Tensor) -> torch.Tensor:
        alpha, sigma = alpha_sigma_rows(logsnr, z)
        scale: float | torch.Tensor = 1.0
        if self.optimized_scale:
            dims = row_dims(z)
            v_cond = ((alpha + sigma) * eps_cond - z) / alpha
            v_uncond = ((alpha + sigma) * eps_uncond - z) / alpha
            scale = (v_cond * v_uncond).sum(dim=dims, keepdim=True) / (v_uncond * v_uncond).sum(
                dim=dims, keepdim=True).clamp_min(TINY)  # s* per sample
        return eps_cond + w * ((eps_cond - scale * eps_uncond) - (1.0 - scale) * z / (alpha + sigma))


def cfg_zero_star(eps_fn: EpsFn, w: GuidanceWeight, *, zero_init_steps: int = RECOMMENDED_ZERO_INIT_STEPS,
                  optimized_scale: bool = True) -> CFGZeroStar:
    """CFG-Zero* (Fan et al. 2025) at the paper's weight w: optimised scale s* and zero-init of the first
    ``zero_init_steps`` grid points; returns an eps_fn (that samplers start per trajectory when K > 0)."""
    return CFGZeroStar(eps_fn, w, zero_init_steps=zero_init_steps, optimized_scale=optimized_scale)
