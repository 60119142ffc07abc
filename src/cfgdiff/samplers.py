"""Samplers: pure functions over an eps_fn that walk an ascending log-SNR grid from noise to data.

Every sampler here has the form ``sample_x(eps_fn, shape, labels, *, steps, generator, ...) -> x``:
it draws z_{λ_0} ~ N(0, I) from ``generator``, makes one eps_fn call per step (guidance is whatever eps_fn
the caller passes: ``cfgdiff.guidance.cfg(model, w)`` and friends), and returns x at the data end.
The λ grid is built apart (``cfgdiff.schedule.logsnr_grid``), step coefficients are computed once on the host
in float64, and memory does not grow with the number of steps.

Notation map: step i goes from λ = grid[i] to λ' = grid[i+1] > λ; α, σ belong to λ and α', σ' to λ'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from cfgdiff.contract import EpsFn
from cfgdiff.schedule import LOGSNR_MAX, LOGSNR_MIN, GridKind, logsnr_grid

StepCallback = Callable[[int, float], None]


def _alpha_sigma_f(logsnr: float) -> tuple[float, float]:
    """Host-side α, σ in float64 (stable: sqrt of sigmoid written with exp of -|λ|)."""
    alpha2 = 1.0 / (1.0 + math.exp(-logsnr)) if logsnr >= 0 else math.exp(logsnr) / (1.0 + math.exp(logsnr))
    sigma2 = 1.0 / (1.0 + math.exp(logsnr)) if logsnr <= 0 else math.exp(-logsnr) / (1.0 + math.exp(-logsnr))
    return math.sqrt(alpha2), math.sqrt(sigma2)


def _resolve_grid(
    steps: int, grid: GridKind | torch.Tensor, logsnr_min: float, logsnr_max: float
) -> list[float]:
    if isinstance(grid, torch.Tensor):
        values = [float(v) for v in grid.detach().to("cpu", torch.float64)]
        if len(values) < 2 or any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise ValueError("a custom logsnr grid must hold at least 2 strictly increasing values")
        return values
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [float(v) for v in logsnr_grid(steps, grid, logsnr_min=logsnr_min, logsnr_max=logsnr_max)]


def _initial_noise(
    shape: Sequence[int],
    labels: torch.Tensor,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
    z: torch.Tensor | None,
) -> torch.Tensor:
    if labels.ndim != 1 or labels.shape[0] != shape[0]:
        raise ValueError(f"labels must be [B] with B = shape[0] = {shape[0]}, got {tuple(labels.shape)}")
    if z is not None:
        if tuple(z.shape) != tuple(shape):
            raise ValueError(f"initial z has shape {tuple(z.shape)}, expected {tuple(shape)}")
        return z.to(dtype)
    if device is None:
        device = generator.device if generator is not None else labels.device
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _noise_like(z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


def _x_bound(clip_x: bool | float) -> float | None:
    """``clip_x``: False (no clipping), True (x̂ in [-1, 1], images) or a positive bound b (x̂ in [-b, b])."""
    if clip_x is False or clip_x is None:
        return None
    if clip_x is True:
        return 1.0
    bound = float(clip_x)
    if not (bound > 0 and math.isfinite(bound)):
        raise ValueError(f"clip_x must be a bool or a positive bound, got {clip_x}")
    return bound


class _Denoiser:
    """Calls the eps_fn at one λ for every row and forms x̂ = (z - σ ε̂)/α, optionally clipped to [-b, b]."""

    def __init__(self, eps_fn: EpsFn, labels: torch.Tensor, z: torch.Tensor, clip_x: bool | float) -> None:
        self.eps_fn = eps_fn
        self.labels = labels.to(z.device)
        self.logsnr_row = torch.empty(z.shape[0], device=z.device, dtype=z.dtype)
        self.x_bound = _x_bound(clip_x)

    def __call__(self, z: torch.Tensor, logsnr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂) at λ; when x̂ is clipped, ε̂ is recomputed from it so the two stay consistent."""
        alpha, sigma = _alpha_sigma_f(logsnr)
        eps = self.eps_fn(z, self.logsnr_row.fill_(logsnr), self.labels)
        x = (z - sigma * eps) / alpha
        if self.x_bound is not None:
            x = x.clamp(-self.x_bound, self.x_bound)
            eps = (z - alpha * x) / sigma
        return eps, x


def sample_ancestral(
    eps_fn: EpsFn,
    shape: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int = 256,
    v_interp: float = 0.3,
    generator: torch.Generator | None = None,
    grid: GridKind | torch.Tensor = "cosine",
    logsnr_min: float = LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    clip_x: bool | float = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    z: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """The paper's ancestral sampler (Algorithm 2) in log-SNR time.

    For each step λ → λ' (λ < λ') on the grid, with x̂ = (z - σ ε̃)/α:

        z' = μ̃(z, x̂) + sqrt((σ̃²)^{1-v} (σ²_{λ|λ'})^{v}) ξ,   ξ ~ N(0, I),
        μ̃ = e^{λ-λ'} (α'/α) z + (1 - e^{λ-λ'}) α' x̂,

    and the last step returns x̂ without noise. ``steps`` network evaluations (each guided one a batched
    call of 2B rows). ``v_interp`` is the paper's v (0.3 at 64×64, 0.2 at 128×128).

    ``clip_x`` clips x̂ to [-1, 1] (True) or [-b, b] (a number b). With a learned ε at λ_min = -20 it is all
    but required: x̂ = (z - σ ε̂)/α divides the network's error by α = e^{-10}.
    """
    if not 0.0 <= v_interp <= 1.0:
        raise ValueError(f"v_interp must lie in [0, 1], got {v_interp}")
    logsnrs = _resolve_grid(steps, grid, logsnr_min, logsnr_max)
    with torch.inference_mode():
        z = _initial_noise(shape, labels, generator, device, dtype, z)
        denoise = _Denoiser(eps_fn, labels, z, clip_x)
        last = len(logsnrs) - 2
        for i, (logsnr, logsnr_next) in enumerate(zip(logsnrs[:-1], logsnrs[1:], strict=True)):
            _, x = denoise(z, logsnr)
            if callback is not None:
                callback(i, logsnr)
            if i == last:
                return x
            alpha, _ = _alpha_sigma_f(logsnr)
            alpha_next, _ = _alpha_sigma_f(logsnr_next)
            one_minus_ratio = -math.expm1(logsnr - logsnr_next)  # 1 - e^{λ-λ'}
            coef_z = math.exp(logsnr - logsnr_next) * alpha_next / alpha
            coef_x = one_minus_ratio * alpha_next
            log_var = (
                math.log(one_minus_ratio)
                + (1.0 - v_interp) * _log_sigmoid(-logsnr_next)
                + v_interp * _log_sigmoid(-logsnr)
            )
            z = coef_z * z + coef_x * x + math.exp(0.5 * log_var) * _noise_like(z, generator)
    raise AssertionError("unreachable")


def _log_sigmoid(t: float) -> float:
    """log sigmoid(t) = -log(1 + e^{-t}), stable for either sign."""
    return -math.log1p(math.exp(-t)) if t >= 0 else t - math.log1p(math.exp(t))


def sample_ddim(
    eps_fn: EpsFn,
    shape: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int = 128,
    generator: torch.Generator | None = None,
    grid: GridKind | torch.Tensor = "cosine",
    logsnr_min: float = LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    clip_x: bool | float = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    z: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (η = 0): z' = α' x̂ + σ' ε̂, i.e. z' = (σ'/σ) z - α' expm1(-h) x̂ with h = (λ'-λ)/2.

    The only randomness is the initial z ~ N(0, I) drawn from ``generator``. The last step (to λ_max) returns
    x̂, as the ancestral sampler does.
    """
    logsnrs = _resolve_grid(steps, grid, logsnr_min, logsnr_max)
    with torch.inference_mode():
        z = _initial_noise(shape, labels, generator, device, dtype, z)
        denoise = _Denoiser(eps_fn, labels, z, clip_x)
        for i, (logsnr, logsnr_next) in enumerate(zip(logsnrs[:-1], logsnrs[1:], strict=True)):
            eps, x = denoise(z, logsnr)
            if callback is not None:
                callback(i, logsnr)
            if i == len(logsnrs) - 2:
                return x
            alpha_next, sigma_next = _alpha_sigma_f(logsnr_next)
            z = alpha_next * x + sigma_next * eps
    raise AssertionError("unreachable")


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
}
