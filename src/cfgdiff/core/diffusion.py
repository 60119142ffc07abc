"""Variance-preserving diffusion in log-SNR: forward process, x/ε conversions, posterior, reverse variance.

All functions are keyword-only and their docstrings state the formula (``shared/docs/math.md``). ``logsnr``
arguments are tensors broadcast against the leading (batch) dimension of ``z``/``x``, or Python floats.
Direction of time: λ < λ' means z_λ is the noisier latent; the sampler moves from λ to λ'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cfgdiff.core.schedule import alpha_sigma


def _as_batch(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A [B] (or scalar) per-example value reshaped to [B, 1, ..., 1] to broadcast against ``like``."""
    # coefficients in float64 (a Python float too), cast to the data's dtype where applied
    t = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    if t.ndim == 1 and like.ndim > 1:
        t = t.reshape(-1, *([1] * (like.ndim - 1)))
    return t


def _alpha_sigma_like(logsnr: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alpha, sigma = alpha_sigma(_as_batch(logsnr, like))
    return alpha.to(like.dtype), sigma.to(like.dtype)


def diffuse(*, x: torch.Tensor, eps: torch.Tensor, logsnr: torch.Tensor | float) -> torch.Tensor:
    """Forward sample z_λ = α_λ x + σ_λ ε, a draw from q(z_λ | x) = N(α_λ x, σ_λ² I)."""
    alpha, sigma = _alpha_sigma_like(logsnr, x)
    return alpha * x + sigma * eps


def predict_x_from_eps(*, z: torch.Tensor, eps: torch.Tensor, logsnr: torch.Tensor | float) -> torch.Tensor:
    """x̂ = (z - σ ε̂) / α."""
    alpha, sigma = _alpha_sigma_like(logsnr, z)
    return (z - sigma * eps) / alpha


def predict_eps_from_x(*, z: torch.Tensor, x: torch.Tensor, logsnr: torch.Tensor | float) -> torch.Tensor:
    """ε̂ = (z - α x̂) / σ."""
    alpha, sigma = _alpha_sigma_like(logsnr, z)
    return (z - alpha * x) / sigma


def _log_one_minus_exp(logsnr: torch.Tensor, logsnr_next: torch.Tensor) -> torch.Tensor:
    """log(1 - e^{λ-λ'}) via expm1, for λ < λ'."""
    return torch.log(-torch.expm1(logsnr - logsnr_next))


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


def posterior_mean(
    *, z: torch.Tensor, x: torch.Tensor, logsnr: torch.Tensor | float, logsnr_next: torch.Tensor | float
) -> torch.Tensor:
    """μ̃ = e^{λ-λ'} (α_λ'/α_λ) z_λ + (1 - e^{λ-λ'}) α_λ' x, the mean of q(z_λ' | z_λ, x), λ < λ'."""
    logsnr, logsnr_next = _as_batch(logsnr, z), _as_batch(logsnr_next, z)
    ratio = torch.exp(logsnr - logsnr_next)  # e^{λ-λ'}
    alpha, _ = alpha_sigma(logsnr)
    alpha_next, _ = alpha_sigma(logsnr_next)
    coef_z = (ratio * alpha_next / alpha).to(z.dtype)
    coef_x = (-torch.expm1(logsnr - logsnr_next) * alpha_next).to(z.dtype)
    return coef_z * z + coef_x * x


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
    if not 0.0 <= v_interp <= 1.0:
        raise ValueError(f"v_interp must lie in [0, 1], got {v_interp}")
    logsnr, logsnr_next = torch.as_tensor(logsnr), torch.as_tensor(logsnr_next)
    log_var = (
        _log_one_minus_exp(logsnr, logsnr_next)
        + (1.0 - v_interp) * F.logsigmoid(-logsnr_next)
        + v_interp * F.logsigmoid(-logsnr)
    )
    return torch.exp(log_var)


def loss_eps_mse(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """ε-prediction loss ||ε_θ(z_λ, c) - ε||², averaged over every element (Algorithm 1)."""
    return torch.mean((eps_pred.float() - eps.float()) ** 2)
