"""Guidance as wrappers over the eps_fn contract: each takes an eps_fn and returns an eps_fn.

Convention: the paper's guidance weight w throughout (Ho & Salimans 2022, Algorithm 2),

    ε̃(z, c) = (1 + w) ε(z, c) - w ε(z),

so w = 0 is the plain conditional model and w = -1 the unconditional one. diffusers' ``guidance_scale``,
k-diffusion's ``cfg_scale`` and EDM2's ``guidance`` are s = w + 1 (``w_from_scale`` converts).

A weight may be a number or a schedule ``w(λ) -> float`` (``guidance_interval`` builds one). Wherever the
weight is 0 the wrapper makes ONE network call of B rows; elsewhere ONE batched call of 2B rows (conditional
rows, then the same rows with the null label K).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from cfgdiff.contract import EpsFn, null_labels
from cfgdiff.schedule import alpha_sigma

WeightSchedule = Callable[[float], float]
GuidanceWeight = float | WeightSchedule
LogProbFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def w_from_scale(scale: float) -> float:
    """The paper's w from a diffusers/k-diffusion style scale s: w = s - 1."""
    return float(scale) - 1.0


def scale_from_w(w: float) -> float:
    """s = w + 1, the ``guidance_scale`` of diffusers and ``cfg_scale`` of k-diffusion."""
    return float(w) + 1.0


def _check_weight(w: GuidanceWeight) -> GuidanceWeight:
    if callable(w):
        return w
    w = float(w)
    if not math.isfinite(w):
        raise ValueError(f"guidance weight w must be finite, got {w}")
    return w


def _row_logsnr(logsnr: torch.Tensor) -> float:
    """The step's λ as a Python float (samplers pass one λ for every row).

    cfgdiff's samplers attach it to the tensor as ``host_logsnr``, so no device read (and, on a GPU, no host
    synchronisation) is needed; other callers' tensors are read once.
    """
    host = getattr(logsnr, "host_logsnr", None)
    return float(host) if host is not None else float(logsnr.reshape(-1)[0])


def guidance_interval(w: float, *, logsnr_lo: float, logsnr_hi: float) -> WeightSchedule:
    """Guidance interval (Kynkäänniemi et al. 2024): weight w for λ in [λ_lo, λ_hi], 0 elsewhere.

    In the variance-exploding σ = e^{-λ/2} of the paper this is σ in (σ_lo, σ_hi] with λ_lo = -2 log σ_hi
    and λ_hi = -2 log σ_lo. Outside the interval the CFG wrapper makes a single conditional call.
    """
    w = float(_check_weight(w))
    if not logsnr_lo <= logsnr_hi:
        raise ValueError(f"need logsnr_lo <= logsnr_hi, got {logsnr_lo} and {logsnr_hi}")

    def schedule(logsnr: float) -> float:
        return w if logsnr_lo <= logsnr <= logsnr_hi else 0.0

    schedule.__doc__ = f"w = {w} for λ in [{logsnr_lo}, {logsnr_hi}], else 0"
    return schedule


def logsnr_from_sigma(sigma: float) -> float:
    """λ = -2 log σ for the variance-exploding noise level σ = e^{-λ/2} of EDM and Kynkäänniemi et al."""
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return -2.0 * math.log(sigma) if math.isfinite(sigma) else -math.inf


def sigma_from_logsnr(logsnr: float) -> float:
    """σ = e^{-λ/2}, the variance-exploding noise level of λ (σ = σ_vp/α_vp)."""
    return math.exp(-0.5 * float(logsnr))


def guidance_interval_sigma(w: float, *, sigma_lo: float, sigma_hi: float) -> WeightSchedule:
    """The guidance interval in the paper's own terms (Kynkäänniemi et al. 2024): weight w where the
    variance-exploding σ = e^{-λ/2} lies in (σ_lo, σ_hi], 0 elsewhere; that is λ in [-2 log σ_hi, -2 log σ_lo).

    Their EDM2 settings are stated in σ (e.g. (0.28, 2.9] for ImageNet-512); σ_hi = inf guides from the start.
    """
    w = float(_check_weight(w))
    if not 0 <= sigma_lo < sigma_hi:
        raise ValueError(f"need 0 <= sigma_lo < sigma_hi, got {sigma_lo} and {sigma_hi}")
    logsnr_lo = logsnr_from_sigma(sigma_hi)  # may be -inf
    logsnr_hi = math.inf if sigma_lo == 0 else logsnr_from_sigma(sigma_lo)

    def schedule(logsnr: float) -> float:
        return w if logsnr_lo <= logsnr < logsnr_hi else 0.0

    schedule.__doc__ = f"w = {w} for σ in ({sigma_lo}, {sigma_hi}], i.e. λ in [{logsnr_lo}, {logsnr_hi}); else 0"
    return schedule


def guided_fraction(schedule: GuidanceWeight, logsnrs: Sequence[float]) -> float:
    """The share of the given evaluation λs at which the weight is non-zero (each costs 2 rows, else 1)."""
    if not logsnrs:
        return 0.0
    weight = schedule if callable(schedule) else (lambda _: schedule)
    return sum(1 for lam in logsnrs if float(weight(float(lam))) != 0.0) / len(logsnrs)


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


class ClassifierFreeGuidance:
    """ε̃(z, c) = (1 + w) ε(z, c) - w ε(z), an eps_fn (Ho & Salimans 2022, Algorithm 2)."""

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight) -> None:
        self.eps_fn = eps_fn
        self.w = _check_weight(w)
        self.num_classes = eps_fn.num_classes

    def weight_at(self, logsnr: float) -> float:
        """The guidance weight used at log-SNR λ."""
        return float(self.w(logsnr)) if callable(self.w) else self.w

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = self.w if not callable(self.w) else self.weight_at(_row_logsnr(logsnr))
        if w == 0.0:
            return self.eps_fn(z, logsnr, labels)  # one call of B rows
        eps_cond, eps_uncond = eval_cond_uncond(self.eps_fn, z, logsnr, labels)
        return combine_cfg(eps_cond, eps_uncond, w)


def cfg(eps_fn: EpsFn, w: GuidanceWeight) -> ClassifierFreeGuidance:
    """Classifier-free guidance at the paper's weight w (a number or a schedule λ -> w); returns an eps_fn."""
    return ClassifierFreeGuidance(eps_fn, w)


def _grad_log_prob(log_prob_fn: LogProbFn, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor):
    """∇_z log p(labels | z_λ), computed with autograd even under ``torch.inference_mode``."""
    with torch.inference_mode(False), torch.enable_grad():
        z_in = z.detach().clone().requires_grad_(True)
        log_prob = log_prob_fn(z_in, logsnr.clone(), labels.clone())  # [B]
        (grad,) = torch.autograd.grad(log_prob.sum(), z_in)
    return grad.detach()


class ClassifierGuidance:
    """ε̃(z, c) = ε(z, c) - w σ_λ ∇_z log p_φ(c | z_λ) (Dhariwal & Nichol 2021), an eps_fn.

    ``log_prob_fn(z, logsnr, labels)`` returns log p_φ(labels | z_λ) of shape [B] and must be differentiable
    in z. Rows carrying the null label K get ε(z) unguided.
    """

    def __init__(self, eps_fn: EpsFn, log_prob_fn: LogProbFn, w: GuidanceWeight) -> None:
        self.eps_fn = eps_fn
        self.log_prob_fn = log_prob_fn
        self.w = _check_weight(w)
        self.num_classes = eps_fn.num_classes

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = self.w if not callable(self.w) else float(self.w(_row_logsnr(logsnr)))
        eps = self.eps_fn(z, logsnr, labels)
        if w == 0.0:
            return eps
        is_cond = labels < self.num_classes
        grad = _grad_log_prob(self.log_prob_fn, z, logsnr, labels.clamp(max=self.num_classes - 1))
        _, sigma = alpha_sigma(logsnr.to(torch.float64))
        sigma = sigma.to(z.dtype).reshape(-1, *([1] * (z.ndim - 1)))
        grad = grad * is_cond.reshape(-1, *([1] * (z.ndim - 1)))
        return eps - w * sigma * grad


def classifier_guidance(eps_fn: EpsFn, log_prob_fn: LogProbFn, w: GuidanceWeight) -> ClassifierGuidance:
    """Classifier guidance ε - w σ ∇_z log p(c | z_λ) with any differentiable classifier; returns an eps_fn."""
    return ClassifierGuidance(eps_fn, log_prob_fn, w)


def implicit_classifier_grad(
    eps_fn: EpsFn, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """∇_z log p^i(c | z_λ) = -(1/σ_λ) [ε(z, c) - ε(z)], the implicit classifier p^i(c|z) ∝ p(z|c)/p(z).

    One batched network call. With exact scores it equals the Bayes classifier's gradient.
    """
    eps_cond, eps_uncond = eval_cond_uncond(eps_fn, z, logsnr, labels)
    _, sigma = alpha_sigma(logsnr.to(torch.float64))
    sigma = sigma.to(z.dtype).reshape(-1, *([1] * (z.ndim - 1)))
    return -(eps_cond - eps_uncond) / sigma
