"""Adaptive guidance, AG (Castillo et al. 2023, "Adaptive Guidance: Training-free Acceleration of Conditional
Diffusion Models", arXiv 2312.12487): stop evaluating ε_u for a sample once its guided step has converged onto
its conditional one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn, null_labels
from cfgdiff.guidance.base import (
    TINY,
    GuidanceWeight,
    GuidedEpsFn,
    check_unit_share,
    combine_cfg,
    read_logsnr_if,
    row_dims,
)

# Castillo et al. switch once the cosine similarity of the two predictions crosses a threshold close to 1; the public
# re-implementations (ComfyUI-Adaptive-Guidance) recommend 0.99 to 1. We could not check the paper's exact value here.
RECOMMENDED_GAMMA = 0.99


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b) per row over the row's own dimensions, clamped to [-1, 1]: [B]."""
    dims = row_dims(a)
    inner = (a * b).sum(dim=dims)
    norms = torch.linalg.vector_norm(a, dim=dims) * torch.linalg.vector_norm(b, dim=dims)
    cosine: torch.Tensor = (inner / norms.clamp_min(TINY)).clamp(-1.0, 1.0)
    return cosine


def check_gamma(gamma: float) -> float:
    """γ as a float in (0, 1] (ValueError otherwise)."""
    return check_unit_share(gamma, "adaptive guidance gamma", "1 = never switch")


class AdaptiveGuidance(GuidedEpsFn):
    """CFG, ε̃ = ε_c + w (ε_c - ε_u), until the sample's guided and conditional predictions agree:

        γ_t = cos(ε_c, ε̃)   per sample, over its own dimensions;
        once γ_t > γ at a guided evaluation, every later evaluation of that sample is ε_c alone (B_active + B rows).

    The switch is per row and per trajectory: ``start_trajectory`` (every cfgdiff sampler calls it) returns a
    fresh mask of switched rows, so nothing leaks between chunks or runs, and a sample's result does not depend on
    which samples share its chunk. A guided evaluation costs ONE call of B + B_u rows, B_u the rows not yet switched
    (2B at first, B once all have switched); unguided steps (w = 0, outside a guidance interval) are B rows and leave
    the mask. cos is clamped to [-1, 1] and the test is strict, so γ = 1 never switches: plain CFG exactly.
    """

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight, *, gamma: float = RECOMMENDED_GAMMA) -> None:
        super().__init__(eps_fn, w)
        self.gamma = check_gamma(gamma)

    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma}

    def start_trajectory(self, logsnrs: Sequence[float]) -> EpsFn:
        """The eps_fn of one batch of trajectories: itself at γ = 1 (never switches), else one with a fresh mask."""
        return self if self.gamma >= 1.0 else _AdaptiveTrajectory(self)

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float, *, z: torch.Tensor,
                logsnr: torch.Tensor) -> torch.Tensor:
        if self.gamma < 1.0:
            raise RuntimeError(f"adaptive guidance at gamma = {self.gamma:g} switches per trajectory: sample through a "
                               "cfgdiff sampler, or call start_trajectory(logsnrs) once per batch of trajectories")
        return combine_cfg(eps_cond, eps_uncond, w)


class _AdaptiveTrajectory:
    """Adaptive guidance over one batch of trajectories: holds which rows have switched to ε_c alone."""

    def __init__(self, method: AdaptiveGuidance) -> None:
        self.method = method
        self.eps_fn = method.eps_fn
        self.num_classes = method.num_classes
        self.switched: torch.Tensor | None = None  # [B] bool

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        w = self.method.step_weight(logsnr, host_logsnr)
        if w is None:  # unguided: B rows, the mask untouched
            return call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)
        batch = z.shape[0]
        if self.switched is None:
            self.switched = torch.zeros(batch, dtype=torch.bool, device=z.device)
        elif self.switched.shape[0] != batch:
            raise RuntimeError(f"this trajectory holds {self.switched.shape[0]} rows, got a call of {batch}: call "
                               "start_trajectory once per batch of trajectories")
        active = torch.nonzero(~self.switched).reshape(-1)  # rows still guided
        if active.numel() == 0:
            return call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)  # all switched: B rows
        eps = call_eps_fn(self.eps_fn, torch.cat([z, z[active]]), torch.cat([logsnr, logsnr[active]]),
                          torch.cat([labels, null_labels(labels[active], self.num_classes)]),
                          host_logsnr=host_logsnr)  # ONE call of B + B_u rows
        eps_cond, eps_uncond = eps[:batch], eps[batch:]
        guided = combine_cfg(eps_cond[active], eps_uncond, w)
        out = eps_cond.clone()
        out[active] = guided
        self.switched[active] = cosine_rows(eps_cond[active], guided) > self.method.gamma
        return out

    def eps_at(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
               host_logsnr: float) -> torch.Tensor:
        return self.guided_eps(z, logsnr, labels, float(host_logsnr))

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.guided_eps(z, logsnr, labels, read_logsnr_if(self.method.needs_logsnr(), logsnr))


def adaptive(eps_fn: EpsFn, w: GuidanceWeight, *, gamma: float = RECOMMENDED_GAMMA) -> AdaptiveGuidance:
    """Adaptive guidance (Castillo et al. 2023) at the paper's weight w: CFG until cos(ε_c, ε̃) > γ, then ε_c alone
    for the rest of that sample's trajectory; γ in (0, 1], 1 = plain CFG. Returns an eps_fn (started per trajectory)."""
    return AdaptiveGuidance(eps_fn, w, gamma=gamma)


__all__ = ["RECOMMENDED_GAMMA", "AdaptiveGuidance", "adaptive", "check_gamma", "cosine_rows"]
