"""Classifier-free guidance (Ho & Salimans 2022, Algorithm 2): ε̃ = (1 + w) ε(z, c) - w ε(z)."""

from __future__ import annotations

import torch

from cfgdiff.core.contract import EpsFn
from cfgdiff.guidance.base import GuidanceWeight, GuidedEpsFn, combine_cfg


class ClassifierFreeGuidance(GuidedEpsFn):
    """ε̃(z, c) = (1 + w) ε(z, c) - w ε(z), an eps_fn (Ho & Salimans 2022, Algorithm 2).

    The combination is affine with weights summing to 1, so it is the same in ε, in x̂ = (z - σ ε)/α, in EDM's D
    and in a v-prediction: D̃ = D_c + w (D_c - D_u). w = 0 (or a step outside a guidance interval) is one network
    call of B rows, any other w one batched call of 2B rows.
    """

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float, *, z: torch.Tensor,
                logsnr: torch.Tensor) -> torch.Tensor:
        return combine_cfg(eps_cond, eps_uncond, w)


def cfg(eps_fn: EpsFn, w: GuidanceWeight) -> ClassifierFreeGuidance:
    """Classifier-free guidance at the paper's weight w (a number or a schedule λ -> w); returns an eps_fn."""
    return ClassifierFreeGuidance(eps_fn, w)
