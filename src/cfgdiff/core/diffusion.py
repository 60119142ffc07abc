"""Variance-preserving diffusion in log-SNR: forward process, x/ε conversions, posterior, reverse variance.

All functions are keyword-only and their docstrings state the formula (``shared/docs/math.md``). ``logsnr``
arguments are tensors broadcast against the leading (batch) dimension of ``z``/``x``, or Python floats.
Direction of time: λ < λ' means z_λ is the noisier latent; the sampler moves from λ to λ'.

Each formula lives here once. Three forms share it:

* from λ (tensor or float, coefficients in float64 cast to the data's dtype): ``diffuse``, ``predict_x_from_eps``,
  ``predict_eps_from_x``, ``posterior_mean``, ``posterior_variance``, ``reverse_variance``, ``forward_transition``;
* from given coefficients α, σ (Python floats or [B, 1, ...] tensors): ``z_from_x_eps``, ``x_from_eps``,
  ``eps_from_x``, what the λ forms apply and what the samplers and guidance methods call;
* host-side step coefficients as Python floats in float64, computed once per step by the samplers:
  ``posterior_coefficients``, ``reverse_log_variance``, ``reverse_std`` (and ``core.schedule.alpha_sigma_host``).
  They run the same private formula functions as the tensor versions, with ``math`` in place of ``torch``.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F

from cfgdiff.core.schedule import alpha_sigma, alpha_sigma_host, log_sigmoid_host

Coefficient = float | torch.Tensor  # a Python float or a tensor broadcasting against the data
_T = TypeVar("_T", float, torch.Tensor)  # one formula for host floats and tensors


def _as_batch(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A [B] (or scalar) per-example value reshaped to [B, 1, ..., 1] to broadcast against ``like``."""
    # coefficients in float64 (a Python float too), cast to the data's dtype where applied
    t = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    if t.ndim == 1 and like.ndim > 1:
        t = t.reshape(-1, *([1] * (like.ndim - 1)))
    return t


def alpha_sigma_rows(logsnr: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α, σ of each row's λ (a [B] tensor, or one float) as [B, 1, ..., 1] tensors in ``like``'s dtype.

    α = sqrt(sigmoid(λ)), σ = sqrt(sigmoid(-λ)) computed in float64 (``core.schedule.alpha_sigma``), then cast.
    """
    alpha, sigma = alpha_sigma(_as_batch(logsnr, like))
    return alpha.to(like.dtype), sigma.to(like.dtype)


def z_from_x_eps(*, x: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    """z = α x + σ ε, with α, σ given (DDIM's step z' = α' x̂ + σ' ε̂ is this at λ')."""
    return alpha * x + sigma * eps


def x_from_eps(*, z: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    """x̂ = (z - σ ε̂) / α, with α, σ given."""
    return (z - sigma * eps) / alpha


def eps_from_x(*, z: torch.Tensor, x: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    """ε̂ = (z - α x̂) / σ, with α, σ given."""
    return (z - alpha * x) / sigma


def sigma_ve_from_logsnr(logsnr: _T) -> _T:
    """σ_ve = e^{-λ/2} = σ/α, the variance-exploding noise level of λ (EDM's σ, k-diffusion's sigma, the guidance
    interval's σ); a Python number or a tensor."""
    if isinstance(logsnr, torch.Tensor):
        return torch.exp(-0.5 * logsnr)
    return math.exp(-0.5 * float(logsnr))


def logsnr_from_sigma_ve(sigma_ve: _T) -> _T:
    """λ = -2 log σ_ve, the inverse of ``sigma_ve_from_logsnr``; for a Python number σ_ve must be positive and
    σ_ve = ∞ gives λ = -∞."""
    if isinstance(sigma_ve, torch.Tensor):
        return -2.0 * torch.log(sigma_ve)
    sigma = float(sigma_ve)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return -2.0 * math.log(sigma) if math.isfinite(sigma) else -math.inf


def diffuse(*, x: torch.Tensor, eps: torch.Tensor, logsnr: torch.Tensor | float) -> torch.Tensor:
    """Forward sample z_λ = α_λ x + σ_λ ε, a draw from q(z_λ | x) = N(α_λ x, σ_λ² I)."""
    alpha, sigma = alpha_sigma_rows(logsnr, x)
    return z_from_x_eps(x=x, eps=eps, alpha=alpha, sigma=sigma)


def predict_x_from_eps(*, z: torch.Tensor, eps: torch.Tensor, logsnr: torch.Tensor | float) -> torch.Tensor:
    """x̂ = (z - σ ε̂) / α."""
    alpha, sigma = alpha_sigma_rows(logsnr, z)
    return x_from_eps(z=z, eps=eps, alpha=alpha, sigma=sigma)


def predict_eps_from_x(*, z: torch.Tensor, x: torch.Tensor, logsnr: torch.Tensor | float) -> torch.Tensor:
    """ε̂ = (z - α x̂) / σ."""
    alpha, sigma = alpha_sigma_rows(logsnr, z)
    return eps_from_x(z=z, x=x, alpha=alpha, sigma=sigma)


def _log_one_minus_exp(logsnr: torch.Tensor, logsnr_next: torch.Tensor) -> torch.Tensor:
    """log(1 - e^{λ-λ'}) via expm1, for λ < λ'."""
    return torch.log(-torch.expm1(logsnr - logsnr_next))


def _check_direction(logsnr: float, logsnr_next: float) -> None:
    if not logsnr < logsnr_next:
        raise ValueError(f"a step needs logsnr < logsnr_next (from noise towards data), got {logsnr} and {logsnr_next}")


def _check_v_interp(v_interp: float) -> None:
    if not 0.0 <= v_interp <= 1.0:
        raise ValueError(f"v_interp must lie in [0, 1], got {v_interp}")


def _posterior_coefficients(ratio: _T, one_minus_ratio: _T, alpha: _T, alpha_next: _T) -> tuple[_T, _T]:
    """(coef_z, coef_x) = (e^{λ-λ'} α'/α, (1 - e^{λ-λ'}) α'), for floats or tensors alike."""
    return ratio * alpha_next / alpha, one_minus_ratio * alpha_next


def _reverse_log_variance(log_one_minus_ratio: _T, log_sigma2: _T, log_sigma2_next: _T, v_interp: float) -> _T:
    """log(1 - e^{λ-λ'}) + (1-v) log σ_λ'² + v log σ_λ², for floats or tensors alike."""
    return log_one_minus_ratio + (1.0 - v_interp) * log_sigma2_next + v_interp * log_sigma2


def forward_transition(
    *, logsnr: torch.Tensor | float, logsnr_next: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z_λ | z_λ') = N((α_λ/α_λ') z_λ', σ²_{λ|λ'} I) for λ < λ'.

    Returns (scale α_λ/α_λ', variance σ²_{λ|λ'} = (1 - e^{λ-λ'}) σ_λ²), both as tensors.
    """
    logsnr, logsnr_next = torch.as_tensor(logsnr), torch.as_tensor(logsnr_next)
    log_scale = 0.5 * (F.logsigmoid(logsnr) - F.logsigmoid(logsnr_next))
    log_var = _log_one_minus_exp(logsnr, logsnr_next) + F.logsigmoid(-logsnr)
    return torch.exp(log_scale), torch.exp(log_var)


def posterior_coefficients(*, logsnr: float, logsnr_next: float) -> tuple[float, float]:
    """(coef_z, coef_x) of the posterior mean μ̃ = coef_z z_λ + coef_x x for one step λ < λ', as Python floats:

    coef_z = e^{λ-λ'} α_λ'/α_λ,   coef_x = (1 - e^{λ-λ'}) α_λ'   (1 - e^{λ-λ'} = -expm1(λ-λ')), in float64.
    The host form of ``posterior_mean``'s coefficients; the ancestral sampler applies them.
    """
    logsnr, logsnr_next = float(logsnr), float(logsnr_next)
    _check_direction(logsnr, logsnr_next)
    alpha, _ = alpha_sigma_host(logsnr)
    alpha_next, _ = alpha_sigma_host(logsnr_next)
    ratio = math.exp(logsnr - logsnr_next)  # e^{λ-λ'}
    one_minus_ratio = -math.expm1(logsnr - logsnr_next)  # 1 - e^{λ-λ'}
    coef_z, coef_x = _posterior_coefficients(ratio, one_minus_ratio, alpha, alpha_next)
    return float(coef_z), float(coef_x)


def posterior_mean(
    *, z: torch.Tensor, x: torch.Tensor, logsnr: torch.Tensor | float, logsnr_next: torch.Tensor | float
) -> torch.Tensor:
    """μ̃ = e^{λ-λ'} (α_λ'/α_λ) z_λ + (1 - e^{λ-λ'}) α_λ' x, the mean of q(z_λ' | z_λ, x), λ < λ'."""
    logsnr, logsnr_next = _as_batch(logsnr, z), _as_batch(logsnr_next, z)
    alpha, _ = alpha_sigma(logsnr)
    alpha_next, _ = alpha_sigma(logsnr_next)
    coef_z, coef_x = _posterior_coefficients(
        torch.exp(logsnr - logsnr_next), -torch.expm1(logsnr - logsnr_next), alpha, alpha_next)
    return coef_z.to(z.dtype) * z + coef_x.to(z.dtype) * x


def posterior_variance(*, logsnr: torch.Tensor | float, logsnr_next: torch.Tensor | float) -> torch.Tensor:
    """σ̃² = (1 - e^{λ-λ'}) σ_λ'², the variance of q(z_λ' | z_λ, x), λ < λ'."""
    logsnr, logsnr_next = torch.as_tensor(logsnr), torch.as_tensor(logsnr_next)
    return torch.exp(_log_one_minus_exp(logsnr, logsnr_next) + F.logsigmoid(-logsnr_next))


def reverse_variance(
    *, logsnr: torch.Tensor | float, logsnr_next: torch.Tensor | float, v_interp: float
) -> torch.Tensor:
    """Variance of the paper's reverse step p(z_λ' | z_λ), λ < λ':

    (σ̃²)^{1-v} (σ²_{λ|λ'})^{v} = (1 - e^{λ-λ'}) exp((1-v) log σ_λ'² + v log σ_λ²), interpolated in log space.
    v = 0 is the posterior variance σ̃², v = 1 the forward variance σ²_{λ|λ'}.
    """
    _check_v_interp(v_interp)
    logsnr, logsnr_next = torch.as_tensor(logsnr), torch.as_tensor(logsnr_next)
    return torch.exp(_reverse_log_variance(
        _log_one_minus_exp(logsnr, logsnr_next), F.logsigmoid(-logsnr), F.logsigmoid(-logsnr_next), v_interp))


def reverse_log_variance(*, logsnr: float, logsnr_next: float, v_interp: float) -> float:
    """log of ``reverse_variance`` for one step λ < λ' as a Python float (float64):

    log(1 - e^{λ-λ'}) + (1-v) log σ_λ'² + v log σ_λ²,   log σ² = log sigmoid(-λ).
    """
    logsnr, logsnr_next = float(logsnr), float(logsnr_next)
    _check_v_interp(v_interp)
    _check_direction(logsnr, logsnr_next)
    log_one_minus_ratio = math.log(-math.expm1(logsnr - logsnr_next))
    return float(_reverse_log_variance(
        log_one_minus_ratio, log_sigmoid_host(-logsnr), log_sigmoid_host(-logsnr_next), v_interp))


def reverse_std(*, logsnr: float, logsnr_next: float, v_interp: float) -> float:
    """The reverse step's standard deviation sqrt((σ̃²)^{1-v} (σ²_{λ|λ'})^{v}) = exp(log-variance / 2), λ < λ'."""
    return math.exp(0.5 * reverse_log_variance(logsnr=logsnr, logsnr_next=logsnr_next, v_interp=v_interp))


def loss_eps_mse(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """ε-prediction loss ||ε_θ(z_λ, c) - ε||², averaged over every element (Algorithm 1)."""
    return torch.mean((eps_pred.float() - eps.float()) ** 2)
