"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models",
arXiv 2406.08070, Algorithm 1): step towards the guided x̂, re-noise with the unconditional ε."""

from __future__ import annotations

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn
from cfgdiff.guidance.base import EpsPair, GuidanceWeight, GuidedEpsFn, eval_cond_uncond, read_logsnr_if


class CFGPlusPlus(GuidedEpsFn):
    """CFG++ through the contract's ``eps_pair`` extension, with the paper's λ_cfg = w + 1 (``scale_from_w``):

        ε̂_x = ε_u + λ_cfg (ε_c - ε_u) = ε_c + w (ε_c - ε_u),   x̂ = (z - σ ε̂_x)/α   (CFG's x̂ at weight w),
        ε̂_renoise = ε_u,                                          z_eff = α x̂ + σ ε_u,

    so DDIM's step is the paper's z' = α' x̂_λ + σ' ε_u. The paper works in DDIM's x̂_0 / ε terms, which are ours;
    every cfgdiff sampler applies it the same way, by continuing from z_eff (``cfgdiff.guidance.base``):
    DPM-Solver++(2M/3M) from z_eff with the guided x̂ in its history, Heun from the z_eff of each evaluation, and the
    stochastic samplers (ancestral, 2M-SDE) form their posterior mean from z_eff and x̂ before adding their noise.

    Range: the paper's λ_cfg ∈ [0, 1], that is w ∈ [-1, 0]; w = -1 is the unconditional sampler exactly (the pair
    is (ε_u, ε_u)). w > 0 extrapolates beyond the paper and is allowed; w < -1 is refused. Unlike CFG, w = 0 is not
    the conditional model (x̂ is conditional, the re-noising unconditional), so w = 0 is a guided step of 2B rows;
    only outside a guidance interval is the step the plain conditional one (B rows, pair (ε_c, ε_c)). The step
    size matters: one DDIM step of CFG++ equals a CFG step at 1 + w_eff = (1 + w)/(1 - e^{-h}), h = (λ' - λ)/2, so
    with more steps the same w guides harder.

    Called as a plain eps_fn (a sampler that knows nothing of ``eps_pair``) it returns ε̂_x, i.e. plain CFG at w.
    """

    zero_is_conditional = False

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight) -> None:
        super().__init__(eps_fn, w)
        if not callable(self.w):
            self.check_step_weight(self.w)

    def check_step_weight(self, w: float) -> None:
        if w < -1.0:
            raise ValueError(f"CFG++ takes w >= -1 (its lambda = w + 1 >= 0; the paper's range is w in [-1, 0]), "
                             f"got {w:g}")

    def guided_pair(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                    host_logsnr: float | None) -> EpsPair:
        """(ε̂_x, ε̂_renoise): (ε_u + λ_cfg (ε_c - ε_u), ε_u) in one call of 2B rows; (ε_c, ε_c) where unguided."""
        w = self.step_weight(logsnr, host_logsnr)
        if w is None:  # outside a guidance interval: the conditional step, B rows
            eps = call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)
            return EpsPair(eps, eps)
        eps_cond, eps_uncond = eval_cond_uncond(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)
        lam_cfg = 1.0 + w
        return EpsPair(eps_uncond + lam_cfg * (eps_cond - eps_uncond), eps_uncond)

    def eps_pair(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> EpsPair:
        """The pair, reading λ from the tensor once where a weight schedule needs it."""
        return self.guided_pair(z, logsnr, labels, read_logsnr_if(self.needs_logsnr(), logsnr))

    def eps_pair_at(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
                    host_logsnr: float) -> EpsPair:
        """The pair told the step's λ as a Python float (``HostLogsnrPairedEpsFn``)."""
        return self.guided_pair(z, logsnr, labels, float(host_logsnr))

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        return self.guided_pair(z, logsnr, labels, host_logsnr).eps_x


def cfgpp(eps_fn: EpsFn, w: GuidanceWeight) -> CFGPlusPlus:
    """CFG++ (Chung et al. 2024) with λ_cfg = w + 1 (the paper's range: w in [-1, 0]); returns an eps_fn whose
    ``eps_pair`` every cfgdiff sampler uses to re-noise with ε(z) while stepping towards the guided x̂."""
    return CFGPlusPlus(eps_fn, w)
