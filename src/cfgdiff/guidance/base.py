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

**The eps_fn contract and its two optional extensions.** A guidance wrapper is an eps_fn,
``eps = eps_fn(z, logsnr, labels)``. It may also have either or both of these methods; every sampler in
``cfgdiff.sampling.solvers`` honours them, deterministic and stochastic alike, and an eps_fn without them is sampled
exactly as before (bit for bit):

* ``eps_pair(z, logsnr, labels) -> EpsPair(eps_x, eps_renoise)``: the ε̂ that defines the data prediction to
  step towards, x̂ = (z - σ ε̂_x)/α, and the ε̂ to re-noise with. The sampler continues from

      z_eff = α x̂ + σ ε̂_renoise = z + σ (ε̂_renoise - ε̂_x)

  instead of z, with the pair (ε̂_renoise, x̂): DDIM's step becomes z' = α' x̂ + σ' ε̂_renoise, the ancestral
  and DPM-Solver++ steps start from z_eff, Heun's predictor and corrector each continue from the z_eff of their
  own evaluation, multistep histories keep x̂. When clipping x̂ to [-b, b], ε̂ absorbs the change so z_eff stays
  put (ε̂ = (z_eff - α x̂_clipped)/σ, as for a plain eps_fn with z_eff = z). A consistent pair (ε̂_x = ε̂_renoise)
  gives z_eff = z and changes nothing. CFG++ is the method that needs it.
* ``start_trajectory(logsnrs) -> eps_fn``: called by the sampler once, before its first step, with the λ grid it
  is about to walk; the sampler then uses the returned eps_fn for this batch of trajectories only. Methods with
  per-trajectory state (APG's momentum, CFG-Zero*'s zero-init of the first K grid points) return a fresh object
  holding it, so state never leaks between chunks, rows or runs, and a call order that matters is confined to
  one sampler call. Called directly, without a trajectory, such a method refuses rather than guess.

All state is per row (norms, projections and quantiles are taken over each sample's own dimensions), so a sample
never depends on which other samples share its chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from cfgdiff.core.contract import EpsFn, null_labels
from cfgdiff.core.schedule import alpha_sigma

WeightSchedule = Callable[[float], float]
GuidanceWeight = float | WeightSchedule
GuideFn = Callable[[EpsFn, GuidanceWeight], EpsFn]  # guide(eps_fn, w) -> eps_fn, what the samplers' callers take
TINY = 1e-30  # keeps a norm or a std in a denominator away from 0 (predictions are O(1) or larger)


class EpsPair(NamedTuple):
    """What ``eps_pair`` returns: x̂ = (z - σ ε̂_x)/α to step towards and ε̂_renoise to re-noise with."""

    eps_x: torch.Tensor
    eps_renoise: torch.Tensor


@runtime_checkable
class PairedEpsFn(EpsFn, Protocol):
    """An eps_fn that also names the x̂ to step towards and the ε̂ to re-noise with (module docstring)."""

    def eps_pair(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> EpsPair: ...


@runtime_checkable
class TrajectoryEpsFn(EpsFn, Protocol):
    """An eps_fn whose state lives in one batch of trajectories: the sampler calls ``start_trajectory`` first."""

    def start_trajectory(self, logsnrs: Sequence[float]) -> EpsFn: ...


def w_from_scale(scale: float) -> float:
    """The paper's w from a diffusers/k-diffusion style scale s: w = s - 1."""
    return float(scale) - 1.0


def scale_from_w(w: float) -> float:
    """s = w + 1, the ``guidance_scale`` of diffusers and ``cfg_scale`` of k-diffusion."""
    return float(w) + 1.0


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
    guided = getattr(w, "guided", None)
    return bool(guided(logsnr)) if guided is not None else True


def _row_logsnr(logsnr: torch.Tensor) -> float:
    """The step's λ as a Python float (samplers pass one λ for every row).

    cfgdiff's samplers attach it to the tensor as ``host_logsnr``, so no device read (and, on a GPU, no host
    synchronisation) is needed; other callers' tensors are read once.
    """
    host = getattr(logsnr, "host_logsnr", None)
    return float(host) if host is not None else float(logsnr.reshape(-1)[0])


def row_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] values as [B, 1, ..., 1] in ``like``'s dtype, to broadcast over each row of ``like``."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def alpha_sigma_rows(logsnr: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α and σ of each row's λ as [B, 1, ..., 1] tensors in ``like``'s dtype (computed in float64)."""
    alpha, sigma = alpha_sigma(logsnr.to(torch.float64))
    return row_view(alpha, like), row_view(sigma, like)


def row_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Every dimension but the batch: norms, stds and projections are taken per sample."""
    return tuple(range(1, x.ndim))


def combine_cfg(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """ε̃ = (1 + w) ε_c - w ε_u = ε_c + w (ε_c - ε_u)."""
    return eps_cond + w * (eps_cond - eps_uncond)


def eval_cond_uncond(
    eps_fn: EpsFn, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε(z, c), ε(z, ∅)) from ONE batched call over 2B rows."""
    batch = z.shape[0]
    eps = eps_fn(
        torch.cat([z, z]),
        torch.cat([logsnr, logsnr]),
        torch.cat([labels, null_labels(labels, eps_fn.num_classes)]),
    )
    return eps[:batch], eps[batch:]


class GuidedEpsFn:
    """The base of the guidance wrappers over one model: the weight, the unguided shortcut, the batched call.

    A subclass states its formula in ``combine(eps_cond, eps_uncond, w, z=, logsnr=)``; ``__call__`` makes one
    call of B rows where the step is unguided (``step_weight`` is None) and one call of 2B rows elsewhere.
    ``zero_is_conditional``: whether w = 0 is the plain conditional model (then w = 0 costs one call of B rows).
    """

    zero_is_conditional = True

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight) -> None:
        self.eps_fn = eps_fn
        self.w = check_weight(w)
        self.num_classes = eps_fn.num_classes

    def weight_at(self, logsnr: float) -> float:
        """The guidance weight used at log-SNR λ."""
        return weight_at(self.w, logsnr)

    def step_weight(self, logsnr: torch.Tensor) -> float | None:
        """This call's weight, or None where the step is the plain conditional one: outside a guidance interval,
        or at w = 0 for a method whose w = 0 is the conditional model."""
        if callable(self.w):
            lam = _row_logsnr(logsnr)
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

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = self.step_weight(logsnr)
        if w is None:
            return self.eps_fn(z, logsnr, labels)  # one call of B rows
        eps_cond, eps_uncond = eval_cond_uncond(self.eps_fn, z, logsnr, labels)  # one call of 2B rows
        return self.combine(eps_cond, eps_uncond, w, z=z, logsnr=logsnr)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(w={self.w!r}{', ' if params else ''}{params})"

    def params(self) -> dict[str, Any]:
        """The method's parameters (besides w), for records and ``repr``."""
        return {}


def check_finite(name: str, value: float) -> float:
    """``value`` as a float, or ValueError with one line naming ``name``."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value
