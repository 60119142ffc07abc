"""What every guidance method shares: the weight w, one batched network call, and the contract's two extensions.

Convention: the paper's guidance weight w throughout (Ho & Salimans 2022, Algorithm 2),

    ε̃(z, c) = (1 + w) ε(z, c) - w ε(z),

so w = 0 is the plain conditional model and w = -1 the unconditional one. diffusers' ``guidance_scale``,
k-diffusion's ``cfg_scale`` and EDM2's ``guidance`` are s = w + 1 (``w_from_scale`` converts). Every method is
written in the ε / x̂ terms of our log-SNR notation: α² = sigmoid(λ), σ² = sigmoid(-λ) and the data prediction
x̂ = (z - σ ε̂)/α, which is EDM's denoiser D(x; σ_ve) with x = z/α and σ_ve = σ/α = e^{-λ/2}.

**Weights.** A weight is a number or a schedule ``w(λ) -> float`` (``cfgdiff.guidance.schedules``). Where a
schedule has a ``guided(λ)`` method and it says False (a guidance interval, outside its interval), every method
takes the plain conditional step: ONE network call of B rows, ε(z, c) unchanged. Where the weight is 0 a method
whose w = 0 is the plain conditional model does the same; elsewhere a guided step is ONE batched call of 2B rows
(conditional rows, then the same rows with the null label K), or one call of each network for autoguidance.

**The eps_fn contract and its optional extensions** (the Protocols of ``cfgdiff.core.contract``, re-exported
here). A guidance wrapper is an eps_fn, ``eps = eps_fn(z, logsnr, labels)``. Every wrapper here is also a
``HostLogsnrEpsFn``: ``eps_at(z, logsnr, labels, host_logsnr=λ)`` is the same ε̂ told the step's λ as a Python
float, which the samplers pass and each wrapper forwards to the eps_fns it wraps (``call_eps_fn``, also inside
``eval_cond_uncond``), so a weight schedule nested at any depth reads no tensor. Called as
``eps_fn(z, logsnr, labels)``, a wrapper that needs λ as a number reads it from the tensor once and forwards that.
A wrapper may also implement either or both of these; every sampler in ``cfgdiff.sampling.solvers`` honours them
(found with ``isinstance`` on the Protocols), deterministic and stochastic alike, and an eps_fn without them is
sampled exactly as before (bit for bit):

* ``PairedEpsFn.eps_pair(z, logsnr, labels) -> EpsPair(eps_x, eps_renoise)`` (with the host λ:
  ``HostLogsnrPairedEpsFn.eps_pair_at``): the ε̂ that defines the data prediction to
  step towards, x̂ = (z - σ ε̂_x)/α, and the ε̂ to re-noise with. The sampler continues from

      z_eff = α x̂ + σ ε̂_renoise = z + σ (ε̂_renoise - ε̂_x)

  instead of z, with the pair (ε̂_renoise, x̂): DDIM's step becomes z' = α' x̂ + σ' ε̂_renoise, the ancestral
  and DPM-Solver++ steps start from z_eff, Heun's predictor and corrector each continue from the z_eff of their
  own evaluation, multistep histories keep x̂. When clipping x̂ to [-b, b], ε̂ absorbs the change so z_eff stays
  put (ε̂ = (z_eff - α x̂_clipped)/σ, as for a plain eps_fn with z_eff = z). A consistent pair (ε̂_x = ε̂_renoise)
  gives z_eff = z and changes nothing. CFG++ is the method that needs it.
* ``TrajectoryEpsFn.start_trajectory(logsnrs) -> eps_fn``: called by the sampler once, before its first step, with the
  λ grid it is about to walk; the sampler then uses the returned eps_fn for this batch of trajectories only. Methods
  with per-trajectory state (APG's momentum, CFG-Zero*'s zero-init of the first K grid points) return a fresh object
  holding it, so state never leaks between chunks, rows or runs, and a call order that matters is confined to one
  sampler call. Called directly, without a trajectory, such a method refuses rather than guess.

All state is per row (norms, projections and quantiles are taken over each sample's own dimensions), so a sample
never depends on which other samples share its chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from cfgdiff.core.contract import (
    EpsFn,
    EpsPair,
    HostLogsnrEpsFn,
    HostLogsnrPairedEpsFn,
    PairedEpsFn,
    TrajectoryEpsFn,
    call_eps_fn,
    null_labels,
    step_logsnr,
)
from cfgdiff.core.diffusion import alpha_sigma_rows

WeightSchedule = Callable[[float], float]
GuidanceWeight = float | WeightSchedule
GuideFn = Callable[[EpsFn, GuidanceWeight], EpsFn]  # guide(eps_fn, w) -> eps_fn, what the samplers' callers take
TINY = 1e-30  # keeps a norm or a std in a denominator away from 0 (predictions are O(1) or larger)


__all__ = [
    "TINY", "EpsPair", "GuidanceWeight", "GuideFn", "GuidedEpsFn", "HostLogsnrEpsFn", "HostLogsnrPairedEpsFn",
    "IntervalSchedule", "PairedEpsFn", "TrajectoryEpsFn", "WeightSchedule", "alpha_sigma_rows", "call_eps_fn",
    "check_finite", "check_weight", "combine_cfg", "eval_cond_uncond", "guided_at", "read_logsnr_if", "row_dims",
    "row_view",
    "scale_from_w", "step_logsnr", "w_from_scale", "weight_at",
]


@runtime_checkable
class IntervalSchedule(Protocol):
    """A weight schedule that also says where guidance is on at all (``guided(λ)``; a guidance interval)."""

    def __call__(self, logsnr: float) -> float: ...

    def guided(self, logsnr: float) -> bool: ...


def w_from_scale(scale: float) -> float:
    """The paper's w from a diffusers/k-diffusion style scale s: w = s - 1."""
    return float(scale) - 1.0


def scale_from_w(w: float) -> float:
    """s = w + 1, the ``guidance_scale`` of diffusers and ``cfg_scale`` of k-diffusion."""
    return float(w) + 1.0


def check_unit_share(value: float, what: str, note: str = "") -> float:
    """``value`` as a float in (0, 1] (ValueError naming ``what``, and ``note`` on its meaning, otherwise; nan is
    refused too)."""
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must lie in (0, 1]{f' ({note})' if note else ''}, got {value:g}")
    return value


def check_weight(w: GuidanceWeight) -> GuidanceWeight:
    """A schedule as it is, or w as a finite float (ValueError otherwise)."""
    if callable(w):
        return w
    w = float(w)
    if not math.isfinite(w):
        raise ValueError(f"guidance weight w must be finite, got {w}")
    return w


def weight_at(w: GuidanceWeight, logsnr: float) -> float:
    """The weight at log-SNR λ: w(λ) for a schedule, else w."""
    return float(w(logsnr)) if callable(w) else float(w)


def guided_at(w: GuidanceWeight, logsnr: float) -> bool:
    """False where a schedule switches guidance off (``w.guided(λ)``, e.g. outside a guidance interval)."""
    return bool(w.guided(logsnr)) if isinstance(w, IntervalSchedule) else True


def row_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] values as [B, 1, ..., 1] in ``like``'s dtype, to broadcast over each row of ``like``."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def row_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Every dimension but the batch: norms, stds and projections are taken per sample."""
    return tuple(range(1, x.ndim))


def combine_cfg(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """ε̃ = (1 + w) ε_c - w ε_u = ε_c + w (ε_c - ε_u)."""
    return eps_cond + w * (eps_cond - eps_uncond)


def eval_cond_uncond(
    eps_fn: EpsFn, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *, host_logsnr: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε(z, c), ε(z, ∅)) from ONE batched call over 2B rows; ``host_logsnr`` (the step's λ) is passed on."""
    batch = z.shape[0]
    eps = call_eps_fn(
        eps_fn,
        torch.cat([z, z]),
        torch.cat([logsnr, logsnr]),
        torch.cat([labels, null_labels(labels, eps_fn.num_classes)]),
        host_logsnr=host_logsnr,
    )
    return eps[:batch], eps[batch:]


class GuidedEpsFn:
    """The base of the guidance wrappers over one model: the weight, the unguided shortcut, the batched call.

    A subclass states its formula in ``combine(eps_cond, eps_uncond, w, z=, logsnr=)``; ``guided_eps`` makes one
    call of B rows where the step is unguided (``step_weight`` is None) and one call of 2B rows elsewhere.
    ``zero_is_conditional``: whether w = 0 is the plain conditional model (then w = 0 costs one call of B rows).
    ``eps_at`` (the samplers' call, with the host λ) and ``__call__`` (the plain eps_fn call, which reads λ from
    the tensor once if the method needs it, ``needs_logsnr``) both end in ``guided_eps`` with the host λ or None.
    """

    zero_is_conditional = True

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight) -> None:
        self.eps_fn = eps_fn
        self.w = check_weight(w)
        self.num_classes = eps_fn.num_classes

    def weight_at(self, logsnr: float) -> float:
        """The guidance weight used at log-SNR λ."""
        return weight_at(self.w, logsnr)

    def step_weight(self, logsnr: torch.Tensor, host_logsnr: float | None = None) -> float | None:
        """This call's weight, or None where the step is the plain conditional one: outside a guidance interval,
        or at w = 0 for a method whose w = 0 is the conditional model. A schedule is looked up at ``host_logsnr``
        (else at λ read from the tensor)."""
        if callable(self.w):
            lam = step_logsnr(logsnr, host_logsnr)
            if not guided_at(self.w, lam):
                return None
            w = float(self.w(lam))
            if not math.isfinite(w):
                raise ValueError(f"the weight schedule gave w = {w} at logsnr {lam}")
            self.check_step_weight(w)
        else:
            w = self.w
        return None if (w == 0.0 and self.zero_is_conditional) else w

    def check_step_weight(self, w: float) -> None:
        """Raise ValueError for a weight this method does not take (a schedule's value is checked per step)."""

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float, *, z: torch.Tensor,
                logsnr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def needs_logsnr(self) -> bool:
        """Whether a call needs the step's λ as a number (a weight schedule): then ``__call__`` reads it once."""
        return callable(self.w)

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        """ε̃ of the method, with the step's λ on the host (or None: not known, read where needed)."""
        w = self.step_weight(logsnr, host_logsnr)
        if w is None:
            return call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)  # one call of B rows
        eps_cond, eps_uncond = eval_cond_uncond(self.eps_fn, z, logsnr, labels,
                                                host_logsnr=host_logsnr)  # one call of 2B rows
        return self.combine(eps_cond, eps_uncond, w, z=z, logsnr=logsnr)

    def eps_at(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
               host_logsnr: float) -> torch.Tensor:
        """ε̃ told the step's λ as a Python float (``HostLogsnrEpsFn``): no tensor read, here or in the eps_fn."""
        return self.guided_eps(z, logsnr, labels, float(host_logsnr))

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.guided_eps(z, logsnr, labels, read_logsnr_if(self.needs_logsnr(), logsnr))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(w={self.w!r}{', ' if params else ''}{params})"

    def params(self) -> dict[str, Any]:
        """The method's parameters (besides w), for records and ``repr``."""
        return {}


def read_logsnr_if(needed: bool, logsnr: torch.Tensor) -> float | None:
    """λ read from the tensor (once) where a directly called wrapper needs it, else None (no device read)."""
    return step_logsnr(logsnr, None) if needed else None


def check_finite(name: str, value: float) -> float:
    """``value`` as a float, or ValueError with one line naming ``name``."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value
