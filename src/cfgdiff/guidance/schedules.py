"""Weight schedules w(λ): the guidance interval (Kynkäänniemi et al. 2024) and the σ ↔ λ conversions.

A schedule is any callable ``w(λ) -> float`` and composes with every guidance method, which evaluates it once per
step at the step's λ. A ``GuidanceInterval`` is a schedule that also says where guidance is switched off
(``guided(λ)``): there every method takes the plain conditional step, one network call of B rows. Its weight
inside the interval may itself be a schedule, so intervals and w(λ) compose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cfgdiff.core.diffusion import logsnr_from_sigma_ve, sigma_ve_from_logsnr
from cfgdiff.guidance.base import GuidanceWeight, WeightSchedule, check_weight, guided_at, weight_at


class GuidanceInterval:
    """w(λ) for λ in [λ_lo, λ_hi] (or [λ_lo, λ_hi) with ``hi_open``), and 0 with guidance off elsewhere.

    Calling it gives the weight (0.0 outside, as a plain schedule would); ``guided(λ)`` says whether λ lies inside,
    which is what the guidance methods read: outside, every method takes the plain conditional step (one network
    call of B rows), including CFG++, whose w = 0 is not the conditional model.
    """

    def __init__(self, w: GuidanceWeight, *, logsnr_lo: float, logsnr_hi: float, hi_open: bool = False,
                 description: str | None = None) -> None:
        self.w = check_weight(w)
        if not logsnr_lo <= logsnr_hi:
            raise ValueError(f"need logsnr_lo <= logsnr_hi, got {logsnr_lo} and {logsnr_hi}")
        self.logsnr_lo = float(logsnr_lo)
        self.logsnr_hi = float(logsnr_hi)
        self.hi_open = hi_open
        self.__doc__ = description or (f"w = {self.w} for λ in [{logsnr_lo}, {logsnr_hi}{')' if hi_open else ']'}, "
                                       "else 0 (unguided)")

    def guided(self, logsnr: float) -> bool:
        """Whether λ lies inside the interval."""
        if self.hi_open:
            return self.logsnr_lo <= logsnr < self.logsnr_hi
        return self.logsnr_lo <= logsnr <= self.logsnr_hi

    def __call__(self, logsnr: float) -> float:
        return weight_at(self.w, logsnr) if self.guided(logsnr) else 0.0

    def __repr__(self) -> str:
        return f"GuidanceInterval({self.__doc__})"


def guidance_interval(w: GuidanceWeight, *, logsnr_lo: float, logsnr_hi: float) -> GuidanceInterval:
    """Guidance interval (Kynkäänniemi et al. 2024): weight w for λ in [λ_lo, λ_hi], guidance off elsewhere.

    In the variance-exploding σ = e^{-λ/2} of the paper this is σ in [σ_lo, σ_hi] with λ_lo = -2 log σ_hi
    and λ_hi = -2 log σ_lo. Outside the interval every method makes a single conditional call of B rows.
    ``w`` may be a number or a schedule w(λ).
    """
    return GuidanceInterval(w, logsnr_lo=logsnr_lo, logsnr_hi=logsnr_hi)


def logsnr_from_sigma(sigma: float) -> float:
    """λ = -2 log σ for the variance-exploding noise level σ = e^{-λ/2} of EDM and Kynkäänniemi et al.
    (``cfgdiff.core.diffusion.logsnr_from_sigma_ve``)."""
    return logsnr_from_sigma_ve(float(sigma))


def sigma_from_logsnr(logsnr: float) -> float:
    """σ = e^{-λ/2}, the variance-exploding noise level of λ (σ = σ_vp/α_vp;
    ``cfgdiff.core.diffusion.sigma_ve_from_logsnr``)."""
    return sigma_ve_from_logsnr(float(logsnr))


def guidance_interval_sigma(w: GuidanceWeight, *, sigma_lo: float, sigma_hi: float) -> GuidanceInterval:
    """The guidance interval in the paper's own terms (Kynkäänniemi et al. 2024): weight w where the
    variance-exploding σ = e^{-λ/2} lies in (σ_lo, σ_hi], guidance off elsewhere; that is λ in
    [-2 log σ_hi, -2 log σ_lo).

    Their EDM2 settings are stated in σ (e.g. (0.28, 2.9] for ImageNet-512); σ_hi = inf guides from the start.
    ``w`` may be a number or a schedule w(λ).
    """
    w = check_weight(w)
    if not 0 <= sigma_lo < sigma_hi:
        raise ValueError(f"need 0 <= sigma_lo < sigma_hi, got {sigma_lo} and {sigma_hi}")
    logsnr_lo = logsnr_from_sigma(sigma_hi)  # may be -inf
    logsnr_hi = math.inf if sigma_lo == 0 else logsnr_from_sigma(sigma_lo)
    return GuidanceInterval(w, logsnr_lo=logsnr_lo, logsnr_hi=logsnr_hi, hi_open=True,
                            description=f"w = {w} for σ in ({sigma_lo}, {sigma_hi}], i.e. λ in [{logsnr_lo}, "
                                        f"{logsnr_hi}); else 0 (unguided)")


def guided_fraction(schedule: GuidanceWeight, logsnrs: Sequence[float]) -> float:
    """The share of the given evaluation λs that are guided: inside the schedule's interval (if it has one) and at
    a non-zero weight. Each costs 2 rows, the others 1, for every method whose w = 0 is the conditional model."""
    if not logsnrs:
        return 0.0
    guided = sum(1 for lam in logsnrs if guided_at(schedule, float(lam)) and weight_at(schedule, float(lam)) != 0.0)
    return guided / len(logsnrs)


__all__ = ["GuidanceInterval", "WeightSchedule", "guidance_interval", "guidance_interval_sigma", "guided_fraction",
           "logsnr_from_sigma", "sigma_from_logsnr"]
