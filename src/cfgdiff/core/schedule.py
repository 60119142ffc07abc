"""Noise schedules in log-SNR time.

Notation (``shared/docs/math.md``): ``logsnr`` is λ = log(α²/σ²), variance preserving, so
α² = sigmoid(λ) and σ² = sigmoid(-λ). Large λ is the data end, small λ is pure noise. Sampling runs from
``logsnr_min`` up to ``logsnr_max``.

Two families of functions live here:

* training distributions: ``logsnr_cosine(u)`` (the paper's default), ``logsnr_uniform(u)``, and
  ``sample_logsnr`` which draws u ~ U(0, 1) from a passed ``torch.Generator``;
* sampling grids: ascending 1-D float64 tensors of ``steps + 1`` values from ``logsnr_min`` to ``logsnr_max``,
  built apart from the solvers that walk them (``logsnr_grid``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

LOGSNR_MIN = -20.0  # the paper's clip range for λ
LOGSNR_MAX = 20.0

LogsnrSchedule = Literal["cosine", "uniform"]
GridKind = Literal["cosine", "uniform", "edm"]


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α = sqrt(sigmoid(λ)), σ = sqrt(sigmoid(-λ)); α² + σ² = 1.

    Computed as exp(logsigmoid(±λ)/2), so both are finite and relatively exact in float32 at λ = ±20
    (no ``1 - something`` cancellation). ``alpha_sigma_host`` is the same for one λ as Python floats.
    """
    logsnr = torch.as_tensor(logsnr)
    if not logsnr.is_floating_point():
        logsnr = logsnr.to(torch.get_default_dtype())
    return torch.exp(0.5 * F.logsigmoid(logsnr)), torch.exp(0.5 * F.logsigmoid(-logsnr))


def log_sigmoid_host(t: float) -> float:
    """log sigmoid(t) = -log(1 + e^{-t}) on the host in float64, written for either sign so e^{±t} never overflows."""
    return -math.log1p(math.exp(-t)) if t >= 0 else t - math.log1p(math.exp(t))


def alpha_sigma_host(logsnr: float) -> tuple[float, float]:
    """α = sqrt(sigmoid(λ)), σ = sqrt(sigmoid(-λ)) of one λ, as Python floats (float64): ``alpha_sigma`` on the host.

    The samplers' step coefficients. sigmoid(±λ) is written with e^{-|λ|} (1/(1 + e^{-λ}) for λ >= 0,
    e^{λ}/(1 + e^{λ}) below), so both are finite and relatively exact at λ = ±20, as in the tensor version.
    """
    alpha2 = 1.0 / (1.0 + math.exp(-logsnr)) if logsnr >= 0 else math.exp(logsnr) / (1.0 + math.exp(logsnr))
    sigma2 = 1.0 / (1.0 + math.exp(logsnr)) if logsnr <= 0 else math.exp(-logsnr) / (1.0 + math.exp(-logsnr))
    return math.sqrt(alpha2), math.sqrt(sigma2)


def _cosine_coefficients(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    """b = arctan(e^{-λ_max/2}), a = arctan(e^{-λ_min/2}) - b (in float64)."""
    if not logsnr_min < logsnr_max:
        raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    return a, b


def logsnr_cosine(
    u: torch.Tensor, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX
) -> torch.Tensor:
    """The paper's cosine map λ = -2 log tan(a u + b); u = 0 gives λ_max, u = 1 gives λ_min.

    Evaluated in float64 (tan near π/2 loses digits in float32) and returned in u's floating dtype.
    """
    u = torch.as_tensor(u)
    out_dtype = u.dtype if u.is_floating_point() else torch.get_default_dtype()
    a, b = _cosine_coefficients(logsnr_min, logsnr_max)
    logsnr = -2.0 * torch.log(torch.tan(a * u.to(torch.float64) + b))
    return logsnr.to(out_dtype)


def u_from_logsnr_cosine(
    logsnr: torch.Tensor, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX
) -> torch.Tensor:
    """Inverse of ``logsnr_cosine``: u = (arctan(e^{-λ/2}) - b) / a."""
    logsnr = torch.as_tensor(logsnr)
    out_dtype = logsnr.dtype if logsnr.is_floating_point() else torch.get_default_dtype()
    a, b = _cosine_coefficients(logsnr_min, logsnr_max)
    u = (torch.atan(torch.exp(-0.5 * logsnr.to(torch.float64))) - b) / a
    return u.to(out_dtype)


def logsnr_cosine_cdf(
    logsnr: torch.Tensor, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX
) -> torch.Tensor:
    """P(Λ ≤ λ) for Λ = logsnr_cosine(U), U ~ U(0, 1): the map is decreasing, so F(λ) = 1 - u(λ)."""
    return 1.0 - u_from_logsnr_cosine(logsnr, logsnr_min, logsnr_max)


def logsnr_uniform(
    u: torch.Tensor, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX
) -> torch.Tensor:
    """λ = λ_max - u (λ_max - λ_min): uniform in λ, with the cosine map's orientation (u = 0 → λ_max)."""
    if not logsnr_min < logsnr_max:
        raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
    u = torch.as_tensor(u)
    if not u.is_floating_point():
        u = u.to(torch.get_default_dtype())
    return logsnr_max - u * (logsnr_max - logsnr_min)


_LOGSNR_MAPS = {"cosine": logsnr_cosine, "uniform": logsnr_uniform}


def sample_logsnr(
    batch_size: int,
    schedule: LogsnrSchedule = "cosine",
    *,
    logsnr_min: float = LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training λ, one per example: λ = map(u), u ~ U(0, 1) drawn from ``generator``. Returns [B] float32."""
    try:
        logsnr_map = _LOGSNR_MAPS[schedule]
    except KeyError:
        raise ValueError(f"unknown logsnr schedule {schedule!r}; choose from {sorted(_LOGSNR_MAPS)}") from None
    u = torch.rand(batch_size, generator=generator, device=device)
    return logsnr_map(u, logsnr_min, logsnr_max).to(torch.float32)


def logsnr_grid(
    steps: int,
    kind: GridKind = "cosine",
    *,
    logsnr_min: float = LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    rho: float = 7.0,
) -> torch.Tensor:
    """Sampling grid: ``steps + 1`` ascending float64 values λ_0 = λ_min < ... < λ_steps = λ_max.

    * ``cosine``: the training map on an evenly spaced u-grid, u_i = 1 - i/steps (the paper's schedule);
    * ``uniform``: evenly spaced in λ;
    * ``edm``: Karras et al.'s grid in the variance-exploding σ = e^{-λ/2},
      σ_i = (σ_max^{1/ρ} + i/steps (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, λ_i = -2 log σ_i, with σ_max = e^{-λ_min/2}
      and σ_min = e^{-λ_max/2}.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not logsnr_min < logsnr_max:
        raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
    i = torch.arange(steps + 1, dtype=torch.float64) / steps
    if kind == "cosine":
        grid = logsnr_cosine(1.0 - i, logsnr_min, logsnr_max)
    elif kind == "uniform":
        grid = logsnr_min + i * (logsnr_max - logsnr_min)
    elif kind == "edm":
        if rho <= 0:
            raise ValueError(f"rho must be positive, got {rho}")
        # log σ^{1/ρ} = -λ/(2ρ); interpolate σ^{1/ρ} linearly, as in EDM.
        s_max = math.exp(-logsnr_min / (2 * rho))
        s_min = math.exp(-logsnr_max / (2 * rho))
        grid = -2.0 * rho * torch.log(s_max + i * (s_min - s_max))
    else:
        raise ValueError(f"unknown grid kind {kind!r}; choose from cosine, uniform, edm")
    grid[0], grid[-1] = logsnr_min, logsnr_max  # exact endpoints
    return grid
