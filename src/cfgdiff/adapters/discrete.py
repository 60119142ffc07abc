"""Discrete-time models in continuous log-SNR: the λ ↔ t map and the conversions of ε-, v- and x-prediction.

A discrete-time (DDPM) model is trained at integer timesteps t = 0 .. T-1 with ᾱ_t = ∏_{s ≤ t} (1 - β_s), the
variance-preserving z_t = sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) ε. In cfgdiff's notation α² = ᾱ_t, so the timestep's
log-SNR is

    λ_t = log(ᾱ_t / (1 - ᾱ_t)),   decreasing in t (t = 0 is the data end, t = T-1 the noise end).

Continuous λ maps to a fractional timestep by interpolating t linearly in λ between the two table entries
that bracket it, which is what k-diffusion's ``DiscreteSchedule.sigma_to_t`` does (it interpolates in
log σ_ve = -λ/2, the same thing); the inverse interpolates λ linearly in t. On [λ_{T-1}, λ_0] the two maps are
inverse to each other, and at λ = λ_t the timestep is t exactly. The model was trained on that range only: the
schedule states it as ``logsnr_min = λ_{T-1}`` and ``logsnr_max = λ_0``, and λ outside it is clamped.

This module is part of the math layer: it imports torch and core's formulas (``cfgdiff.core.diffusion``), nothing
of diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from cfgdiff.core.diffusion import alpha_sigma_rows, eps_from_x, x_from_eps

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
# ᾱ is clamped to [2^-24, 1 - 2^-24] before taking logs: a zero-terminal-SNR schedule (ᾱ_{T-1} = 0, λ = -∞) then
# ends at λ ≈ -16.6, as diffusers' own samplers do for it (they set ᾱ_{T-1} = 2^-24).
ALPHA_CUMPROD_EPS = 2.0**-24
# The terminal value appended to a scheduler's grid (``logsnr_grid_from_timesteps``) lies this far above the last
# evaluated λ: no sampler evaluates the network there, and x = z/α at it differs from x̂ by σ_ve = e^{-20}.
TERMINAL_LOGSNR_GAP = 40.0


class DiscreteSchedule:
    """The λ ↔ t map of a discrete-time schedule given by its ``alphas_cumprod`` (ᾱ_t, t = 0 .. T-1).

    ``logsnrs[t] = log ᾱ_t - log(1 - ᾱ_t)`` in float64 (strictly decreasing); ``logsnr_min = logsnrs[T-1]`` and
    ``logsnr_max = logsnrs[0]`` are the range the model was trained on.
    """

    def __init__(self, alphas_cumprod: torch.Tensor | Sequence[float]) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1).clamp(
            ALPHA_CUMPROD_EPS, 1.0 - ALPHA_CUMPROD_EPS)
        if abar.numel() < 2:
            raise ValueError(f"a discrete schedule needs at least 2 timesteps, got {abar.numel()}")
        logsnrs = torch.log(abar) - torch.log1p(-abar)  # [T], λ_t
        if not bool((logsnrs[1:] < logsnrs[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing in t (every beta in (0, 1))")
        self.alphas_cumprod = abar
        self.logsnrs = logsnrs
        self._neg_logsnrs = -logsnrs  # ascending in t, for searchsorted
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_timesteps(self) -> int:
        return int(self.logsnrs.numel())

    @property
    def logsnr_min(self) -> float:
        """λ_{T-1}: the noisiest timestep the model was trained at."""
        return float(self.logsnrs[-1])

    @property
    def logsnr_max(self) -> float:
        """λ_0: the least noisy timestep the model was trained at."""
        return float(self.logsnrs[0])

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(-λ_t ascending, λ_t) on ``device`` in float64 (float32 where the device has no float64, e.g. mps)."""
        dtype = torch.float32 if device.type == "mps" else torch.float64
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = (self._neg_logsnrs.to(device, dtype), self.logsnrs.to(device, dtype))
        return self._cache[key]

    def clamp_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        """λ clamped to [logsnr_min, logsnr_max]."""
        return logsnr.clamp(self.logsnr_min, self.logsnr_max)

    def t_from_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of λ (any shape, on its device): t = i + (λ_i - λ)/(λ_i - λ_{i+1}) for
        λ_{i+1} <= λ <= λ_i; λ outside the table is clamped to it (t in [0, T-1]). Returned in float64
        (float32 on mps). Vectorised: no host read, so no device synchronisation."""
        neg_table, table = self._tables(logsnr.device)
        neg = -logsnr.to(neg_table.dtype)
        last = self.num_timesteps - 1
        i = (torch.searchsorted(neg_table, neg, right=True) - 1).clamp(0, last - 1)
        lo, hi = table[i], table[i + 1]  # λ_i > λ_{i+1}
        frac = ((lo + neg) / (lo - hi)).clamp(0.0, 1.0)  # (λ_i - λ) / (λ_i - λ_{i+1})
        return i.to(neg_table.dtype) + frac

    def logsnr_from_t(self, t: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
        """λ at a (fractional) timestep, linear in t between integer timesteps; t is clamped to [0, T-1]."""
        t = torch.as_tensor(t)
        device = t.device
        _, table = self._tables(device)
        t = t.to(table.dtype).clamp(0.0, self.num_timesteps - 1)
        i = t.floor().long().clamp(max=self.num_timesteps - 2)
        frac = t - i.to(t.dtype)
        return table[i] + frac * (table[i + 1] - table[i])


def logsnr_grid_from_timesteps(
    schedule: DiscreteSchedule, timesteps: torch.Tensor | Sequence[float], *, terminal_logsnr: float | None = None
) -> torch.Tensor:
    """A cfgdiff sampler grid that evaluates the network at a diffusers scheduler's ``timesteps``.

    ``timesteps`` are the scheduler's (descending, e.g. ``scheduler.timesteps`` after ``set_timesteps``); the
    grid is their λ_t in ascending order plus one terminal value, the target of the last step, which no
    sampler evaluates: by default λ_last + ``TERMINAL_LOGSNR_GAP``, where x = z/α is x̂ to within σ_ve = e^{-20}.
    That mirrors diffusers' DDIM with ``set_alpha_to_one`` and DPM-Solver++ with ``final_sigmas_type="zero"``,
    whose last step returns x̂. Returns a float64 [len(timesteps) + 1] tensor for the samplers' ``grid=``.
    """
    t = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1).cpu()
    logsnr = schedule.logsnr_from_t(t).to(torch.float64).cpu()
    if logsnr.numel() > 1 and not bool((logsnr[1:] > logsnr[:-1]).all()):
        raise ValueError("timesteps must be strictly decreasing (noise to data), as a scheduler's timesteps are")
    end = float(logsnr[-1]) + TERMINAL_LOGSNR_GAP if terminal_logsnr is None else float(terminal_logsnr)
    if not end > float(logsnr[-1]):
        raise ValueError(f"terminal_logsnr {end} must exceed the last timestep's log-SNR {float(logsnr[-1])}")
    return torch.cat([logsnr, torch.tensor([end], dtype=torch.float64)])


def eps_from_prediction(
    prediction: torch.Tensor, z: torch.Tensor, logsnr: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """ε̂ from a network output in any of diffusers' parameterisations, with α² = sigmoid(λ), σ² = sigmoid(-λ):

    * ``epsilon``: ε̂ = output;
    * ``v_prediction`` (Salimans & Ho 2022, v = α ε - σ x): ε̂ = α v̂ + σ z;
    * ``sample`` (x-prediction): ε̂ = (z - α x̂) / σ.

    ``prediction`` and ``z`` are [B, ...], ``logsnr`` [B]; computed in ``z``'s dtype.
    """
    prediction = prediction.to(z.dtype)
    if prediction_type == "epsilon":
        return prediction
    alpha, sigma = alpha_sigma_rows(logsnr, z)
    if prediction_type == "v_prediction":
        return alpha * prediction + sigma * z
    if prediction_type == "sample":
        return eps_from_x(z=z, x=prediction, alpha=alpha, sigma=sigma)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose from {', '.join(PREDICTION_TYPES)}")


def prediction_from_eps(eps: torch.Tensor, z: torch.Tensor, logsnr: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The inverse of ``eps_from_prediction``: ε̂ → v̂ = (ε̂ - σ z)/α, or x̂ = (z - σ ε̂)/α, or ε̂ itself."""
    if prediction_type == "epsilon":
        return eps
    alpha, sigma = alpha_sigma_rows(logsnr, z)
    if prediction_type == "v_prediction":
        return (eps - sigma * z) / alpha
    if prediction_type == "sample":
        return x_from_eps(z=z, eps=eps, alpha=alpha, sigma=sigma)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose from {', '.join(PREDICTION_TYPES)}")


def logsnr_of_alpha_cumprod(alpha_cumprod: float) -> float:
    """λ = log(ᾱ / (1 - ᾱ)) of one ᾱ in (0, 1), in float64."""
    a = min(max(float(alpha_cumprod), ALPHA_CUMPROD_EPS), 1.0 - ALPHA_CUMPROD_EPS)
    return math.log(a) - math.log1p(-a)
