"""Samplers: pure functions over an eps_fn that walk an ascending log-SNR grid from noise to data.

Every sampler here has the form ``sample_x(eps_fn, shape, labels, *, steps, generator, ...) -> x``:
it draws z_{λ_0} ~ N(0, I) from ``generator``, makes one eps_fn call per step (two for Heun's corrector;
guidance is whatever eps_fn the caller passes: ``cfgdiff.guidance.cfg(model, w)`` and friends), and returns x
at the data end. ``generator`` is one ``torch.Generator`` for the whole batch, or a sequence of B generators,
one per row: row i's initial noise and every later draw of row i then come from ``generator[i]`` alone, so a
sample does not depend on which other rows share its batch (``cfgdiff.sampling.generate`` uses this for chunking).
The λ grid is built apart (``cfgdiff.core.schedule.logsnr_grid``), step coefficients are computed once on the host
in float64, and memory does not grow with the number of steps.

Notation map: step i goes from λ = grid[i] to λ' = grid[i+1] > λ; α, σ belong to λ and α', σ' to λ'.
DPM-Solver's time is half our log-SNR, so its step is h = (λ' - λ)/2; EDM's noise level is the
variance-exploding σ_ve = e^{-λ/2} = σ/α with x_ve = z/α. The formulas are core's: α, σ from
``core.schedule.alpha_sigma_host``, x̂ = (z - σ ε̂)/α from ``core.diffusion.x_from_eps``, the ancestral step from
``core.diffusion.posterior_coefficients`` and ``reverse_std``; only the solvers' own coefficients (DPM-Solver++'s
φ, Heun's correction) are written here. No sampler reads anything back from the device inside its loop.

What a sampler hands the eps_fn is the contract of ``cfgdiff.core.contract``, in its types, in one place
(``_Denoiser``): ``z``, the step's λ as a [B] tensor, the labels, and, for an eps_fn that takes it
(``HostLogsnrEpsFn``: every guidance wrapper), the same λ as a Python float through ``eps_at(..., host_logsnr=λ)``,
so a guidance schedule at any depth of wrapping needs no device read. A plain network is called as
``eps_fn(z, logsnr, labels)``. Guidance that needs more of the sampler's cooperation implements the contract's
other Protocols, found with ``isinstance`` (the full contract is in ``cfgdiff.guidance.base``); an eps_fn
without them is sampled exactly as before:

* ``TrajectoryEpsFn.start_trajectory(logsnrs)``: called once per sampler call, before the first step, with the λ
  grid; the returned eps_fn is used for this batch of trajectories only (per-trajectory state: APG momentum,
  CFG-Zero* zero-init), so nothing carries over between calls.
* ``PairedEpsFn.eps_pair(z, logsnr, labels) -> (ε̂_x, ε̂_renoise)`` (``eps_pair_at`` with the host λ): step towards x̂
  = (z - σ ε̂_x)/α and re-noise with ε̂_renoise (CFG++). Every sampler then continues from z_eff = α x̂ + σ ε̂_renoise
  = z + σ (ε̂_renoise - ε̂_x) in place of z: DDIM's z' = α' x̂ + σ' ε̂_renoise, the ancestral posterior mean and the
  DPM-Solver++ steps from z_eff, Heun from the z_eff of each of its two evaluations. Multistep histories hold x̂; the
  stochastic samplers add their noise after the step, as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from cfgdiff.core.contract import EpsFn, PairedEpsFn, TrajectoryEpsFn, call_eps_fn, call_eps_pair
from cfgdiff.core.diffusion import (
    eps_from_x,
    logsnr_from_sigma_ve,
    posterior_coefficients,
    reverse_std,
    x_from_eps,
    z_from_x_eps,
)
from cfgdiff.core.schedule import LOGSNR_MAX, LOGSNR_MIN, GridKind, alpha_sigma_host, logsnr_grid

StepCallback = Callable[[int, float], None]
Generators = torch.Generator | Sequence[torch.Generator] | None
EDM_LOGSNR_MIN = logsnr_from_sigma_ve(80.0)  # EDM's σ_max = 80 as a log-SNR: the Heun sampler's default start


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


class _Noise:
    """Standard normal draws for a batch of B rows: from one generator, or row i from ``generators[i]``."""

    def __init__(self, generator: Generators, batch: int) -> None:
        if generator is None or isinstance(generator, torch.Generator):
            self.generator, self.rows = generator, None
        else:
            self.generator, self.rows = None, list(generator)
            if len(self.rows) != batch:
                raise ValueError(f"got {len(self.rows)} per-row generators for a batch of {batch} rows")
            if not all(isinstance(g, torch.Generator) for g in self.rows):
                raise ValueError("generator must be a torch.Generator or a sequence of them, one per row")

    @property
    def device(self) -> torch.device | None:
        if self.rows is not None:
            return self.rows[0].device if self.rows else None
        return self.generator.device if self.generator is not None else None

    def randn(self, shape: Sequence[int], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        if self.rows is None:
            return torch.randn(tuple(shape), generator=self.generator, device=device, dtype=dtype)
        out = torch.empty(tuple(shape), device=device, dtype=dtype)
        for row, g in zip(out.unbind(0), self.rows, strict=True):  # row i from stream i only
            row.normal_(generator=g)
        return out


def _initial_noise(
    shape: Sequence[int],
    labels: torch.Tensor,
    noise: _Noise,
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
        device = noise.device if noise.device is not None else labels.device
    return noise.randn(shape, device, dtype)


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
    """Calls the eps_fn at one λ for every row and forms x̂ = (z - σ ε̂)/α, optionally clipped to [-b, b].

    Starts a ``TrajectoryEpsFn``'s trajectory once, passes the step's λ on the host to a ``HostLogsnrEpsFn``, and
    honours a ``PairedEpsFn`` (the module docstring); returns the point z the sampler continues from, which for a
    plain eps_fn is the z it was given.
    """

    def __init__(self, eps_fn: EpsFn, labels: torch.Tensor, z: torch.Tensor, clip_x: bool | float,
                 logsnrs: Sequence[float]) -> None:
        if isinstance(eps_fn, TrajectoryEpsFn):
            eps_fn = eps_fn.start_trajectory(list(logsnrs))  # this batch's own state
        self.eps_fn = eps_fn
        self.eps_pair: PairedEpsFn | None = eps_fn if isinstance(eps_fn, PairedEpsFn) else None
        self.labels = labels.to(z.device)
        self.logsnr_row = torch.empty(z.shape[0], device=z.device, dtype=z.dtype)
        self.x_bound = _x_bound(clip_x)

    def __call__(self, z: torch.Tensor, logsnr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ε̂, x̂, z) at λ. For a plain eps_fn z is returned as given; for an ``eps_pair`` it is
        z_eff = z + σ (ε̂_renoise - ε̂_x) and ε̂ = ε̂_renoise. When x̂ is clipped, ε̂ = (z - α x̂)/σ is recomputed from
        it, so the three stay consistent (z = α x̂ + σ ε̂)."""
        alpha, sigma = alpha_sigma_host(logsnr)
        self.logsnr_row.fill_(logsnr)
        if self.eps_pair is None:
            eps = call_eps_fn(self.eps_fn, z, self.logsnr_row, self.labels, host_logsnr=logsnr)
            x = x_from_eps(z=z, eps=eps, alpha=alpha, sigma=sigma)
        else:
            eps_x, eps = call_eps_pair(self.eps_pair, z, self.logsnr_row, self.labels, host_logsnr=logsnr)
            x = x_from_eps(z=z, eps=eps_x, alpha=alpha, sigma=sigma)
            z = z + sigma * (eps - eps_x)  # z_eff = α x̂ + σ ε̂_renoise
        if self.x_bound is not None:
            x = x.clamp(-self.x_bound, self.x_bound)
            eps = eps_from_x(z=z, x=x, alpha=alpha, sigma=sigma)
        return eps, x, z


def sample_ancestral(
    eps_fn: EpsFn,
    shape: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int = 256,
    v_interp: float = 0.3,
    generator: Generators = None,
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
        noise = _Noise(generator, shape[0])
        z = _initial_noise(shape, labels, noise, device, dtype, z)
        denoise = _Denoiser(eps_fn, labels, z, clip_x, logsnrs)
        last = len(logsnrs) - 2
        for i, (logsnr, logsnr_next) in enumerate(zip(logsnrs[:-1], logsnrs[1:], strict=True)):
            _, x, z = denoise(z, logsnr)
            if callback is not None:
                callback(i, logsnr)
            if i == last:
                return x
            coef_z, coef_x = posterior_coefficients(logsnr=logsnr, logsnr_next=logsnr_next)  # μ̃ = coef_z z + coef_x x̂
            std = reverse_std(logsnr=logsnr, logsnr_next=logsnr_next, v_interp=v_interp)
            z = coef_z * z + coef_x * x + std * noise.randn(z.shape, z.device, z.dtype)
    raise AssertionError("unreachable")


def sample_ddim(
    eps_fn: EpsFn,
    shape: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int = 128,
    generator: Generators = None,
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
        noise = _Noise(generator, shape[0])
        z = _initial_noise(shape, labels, noise, device, dtype, z)
        denoise = _Denoiser(eps_fn, labels, z, clip_x, logsnrs)
        for i, (logsnr, logsnr_next) in enumerate(zip(logsnrs[:-1], logsnrs[1:], strict=True)):
            eps, x, z = denoise(z, logsnr)
            if callback is not None:
                callback(i, logsnr)
            if i == len(logsnrs) - 2:
                return x
            alpha_next, sigma_next = alpha_sigma_host(logsnr_next)
            z = z_from_x_eps(x=x, eps=eps, alpha=alpha_next, sigma=sigma_next)  # z' = α' x̂ + σ' ε̂
    raise AssertionError("unreachable")


def _finish(z: torch.Tensor, logsnr_max: float, x_bound: float | None) -> torch.Tensor:
    """x = z/α at the data end (σ = e^{-10} at λ = 20), clipped to the data range if x̂ was."""
    alpha, _ = alpha_sigma_host(logsnr_max)
    x = z / alpha
    return x.clamp(-x_bound, x_bound) if x_bound is not None else x


def _dpmpp_multistep(
    eps_fn: EpsFn,
    shape: Sequence[int],
    labels: torch.Tensor,
    *,
    order: int,
    eta: float,
    steps: int,
    generator: Generators,
    grid: GridKind | torch.Tensor,
    logsnr_min: float,
    logsnr_max: float,
    clip_x: bool | float,
    device: torch.device | str | None,
    dtype: torch.dtype,
    z: torch.Tensor | None,
    callback: StepCallback | None,
) -> torch.Tensor:
    """DPM-Solver++ multistep (Lu et al. 2022, arXiv 2211.01095) in log-SNR, orders 2 and 3, ODE (η = 0) or SDE.

    Written in z with h = (λ' - λ)/2 and the data predictions x̂ of the last steps (k-diffusion's
    ``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde`` mapped from x_ve = z/α, σ_ve = σ/α):

        z' = (σ'/σ) e^{-ηh} z + α' φ_1 x̂ + α' (correction) + σ' sqrt(1 - e^{-2ηh}) ξ,   φ_1 = 1 - e^{-(1+η)h},

    2nd order: correction = (φ_1 / 2r) (x̂ - x̂_prev), r = h_prev / h, which at η = 0 is math.md's
    D = (1 + 1/(2r)) x̂ - (1/(2r)) x̂_prev. 3rd order: φ_2 d_1 - φ_3 d_2 from the last three x̂.
    The first steps fall back to lower orders, as do the last ones (DPM-Solver's ``lower_order_final``: the
    last step, to λ_max, is 1st order, which keeps large step-size ratios r from extrapolating x̂); the last
    step adds no noise and x = z/α is returned at λ_max.
    """
    if eta < 0 or not math.isfinite(eta):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    logsnrs = _resolve_grid(steps, grid, logsnr_min, logsnr_max)
    last = len(logsnrs) - 2
    with torch.inference_mode():
        noise = _Noise(generator, shape[0])
        z = _initial_noise(shape, labels, noise, device, dtype, z)
        denoise = _Denoiser(eps_fn, labels, z, clip_x, logsnrs)
        x_prev: list[torch.Tensor] = []  # x̂ of the previous steps, newest first (at most order - 1)
        h_prev: list[float] = []  # their step sizes h
        for i, (logsnr, logsnr_next) in enumerate(zip(logsnrs[:-1], logsnrs[1:], strict=True)):
            _, x, z = denoise(z, logsnr)
            if callback is not None:
                callback(i, logsnr)
            _, sigma = alpha_sigma_host(logsnr)
            alpha_next, sigma_next = alpha_sigma_host(logsnr_next)
            h = 0.5 * (logsnr_next - logsnr)
            eta_i = 0.0 if i == last else eta  # the last step is deterministic
            h_eta = (1.0 + eta_i) * h
            phi_1 = -math.expm1(-h_eta)  # 1 - e^{-(1+η)h}
            z_next = (sigma_next / sigma * math.exp(-eta_i * h)) * z
            z_next = z_next.add_(x, alpha=alpha_next * phi_1)
            # lower order at the start (no history yet) and at the end (1st order on the last step, to λ_max)
            n_prev = min(len(x_prev), order - 1, last - i)
            if n_prev == 1 and order == 2:
                r = h_prev[0] / h
                z_next = z_next.add_(x - x_prev[0], alpha=alpha_next * 0.5 * phi_1 / r)
            elif n_prev == 1:
                r = h_prev[0] / h
                phi_2 = 1.0 - phi_1 / h_eta  # expm1(-h_eta)/h_eta + 1
                z_next = z_next.add_(x - x_prev[0], alpha=alpha_next * phi_2 / r)
            elif n_prev == 2:
                r0, r1 = h_prev[0] / h, h_prev[1] / h
                d1_0 = (x - x_prev[0]) / r0
                d1_1 = (x_prev[0] - x_prev[1]) / r1
                phi_2 = 1.0 - phi_1 / h_eta
                phi_3 = phi_2 / h_eta - 0.5
                d2 = (d1_0 - d1_1) / (r0 + r1)
                d1 = d1_0.add_(d2, alpha=r0)  # d1_0 + (d1_0 - d1_1) r0/(r0 + r1)
                z_next = z_next.add_(d1, alpha=alpha_next * phi_2).add_(d2, alpha=-alpha_next * phi_3)
            if eta_i > 0:
                z_next = z_next.add_(noise.randn(z.shape, z.device, z.dtype),
                                     alpha=sigma_next * math.sqrt(-math.expm1(-2.0 * eta_i * h)))
            z = z_next
            x_prev = [x, *x_prev][: order - 1]
            h_prev = [h, *h_prev][: order - 1]
        return _finish(z, logsnrs[-1], denoise.x_bound)


def sample_dpmpp_2m(
    eps_fn: EpsFn,
    shape: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int = 20,
    generator: Generators = None,
    grid: GridKind | torch.Tensor = "cosine",
    logsnr_min: float = LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    clip_x: bool | float = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    z: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), deterministic: z' = (σ'/σ) z - α' expm1(-h) D, h = (λ' - λ)/2,
    D = (1 + 1/(2r)) x̂ - (1/(2r)) x̂_prev with r = h_prev/h (D = x̂ on the first step). Second order in h.
    """
    return _dpmpp_multistep(eps_fn, shape, labels, order=2, eta=0.0, steps=steps, generator=generator, grid=grid,
                            logsnr_min=logsnr_min, logsnr_max=logsnr_max, clip_x=clip_x, device=device,
                            dtype=dtype, z=z, callback=callback)


def sample_dpmpp_2m_sde(
    eps_fn: EpsFn,
    shape: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int = 20,
    eta: float = 1.0,
    generator: Generators = None,
    grid: GridKind | torch.Tensor = "cosine",
    logsnr_min: float = LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    clip_x: bool | float = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    z: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, §5; k-diffusion's midpoint form), noise from ``generator``:

        z' = (σ'/σ) e^{-ηh} z + α' φ_1 x̂ + α' (φ_1/2r)(x̂ - x̂_prev) + σ' sqrt(1 - e^{-2ηh}) ξ,
        φ_1 = 1 - e^{-(1+η)h}, h = (λ' - λ)/2.

    η = 1 is the SDE of the paper; η = 0 gives ``sample_dpmpp_2m`` exactly.
    """
    return _dpmpp_multistep(eps_fn, shape, labels, order=2, eta=eta, steps=steps, generator=generator, grid=grid,
                            logsnr_min=logsnr_min, logsnr_max=logsnr_max, clip_x=clip_x, device=device,
                            dtype=dtype, z=z, callback=callback)


def sample_dpmpp_3m(
    eps_fn: EpsFn,
    shape: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int = 20,
    generator: Generators = None,
    grid: GridKind | torch.Tensor = "cosine",
    logsnr_min: float = LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    clip_x: bool | float = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    z: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M), deterministic (k-diffusion's ``sample_dpmpp_3m_sde`` at η = 0), h = (λ' - λ)/2:

        z' = (σ'/σ) z + α' [φ_1 x̂ + φ_2 d_1 - φ_3 d_2],  φ_1 = 1 - e^{-h}, φ_2 = 1 - φ_1/h, φ_3 = φ_2/h - 1/2,

    with d_1, d_2 the first and second divided differences of the last three x̂ (r_0 = h_1/h, r_1 = h_2/h).
    """
    return _dpmpp_multistep(eps_fn, shape, labels, order=3, eta=0.0, steps=steps, generator=generator, grid=grid,
                            logsnr_min=logsnr_min, logsnr_max=logsnr_max, clip_x=clip_x, device=device,
                            dtype=dtype, z=z, callback=callback)


def sample_heun(
    eps_fn: EpsFn,
    shape: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int = 18,
    generator: Generators = None,
    grid: GridKind | torch.Tensor = "edm",
    logsnr_min: float = EDM_LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    clip_x: bool | float = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    z: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithm 1 without churn) through the eps_fn contract.

    Probability-flow ODE dx/dσ = (x - D(x; σ))/σ in σ = e^{-λ/2} with x = z/α and D = x̂; since
    x - D = σ ε̂, the slope is ε̂ itself. Per step σ → σ':

        Euler:   x_e = x + (σ' - σ) ε̂(x)            (= the DDIM step z_e = α' x̂ + σ' ε̂),
        Heun:    x'  = x + (σ' - σ) (ε̂(x) + ε̂(x_e))/2,

    and the last step is Euler alone, so ``steps`` intervals cost 2·steps - 1 eps_fn calls. Written in z as
    z' = z_e + α'(σ'_ve - σ_ve)(ε̂_e - ε̂)/2 to avoid cancellation at large σ. Defaults are EDM's: the ρ = 7
    grid from σ_max = 80 (λ_min = -2 log 80 ≈ -8.76, z ~ N(0, I) there as in EDM) to our λ_max; with
    λ_min = -20 that grid spends more than half its steps at σ > 80, where nothing happens.
    """
    logsnrs = _resolve_grid(steps, grid, logsnr_min, logsnr_max)
    last = len(logsnrs) - 2
    with torch.inference_mode():
        noise = _Noise(generator, shape[0])
        z = _initial_noise(shape, labels, noise, device, dtype, z)
        denoise = _Denoiser(eps_fn, labels, z, clip_x, logsnrs)
        for i, (logsnr, logsnr_next) in enumerate(zip(logsnrs[:-1], logsnrs[1:], strict=True)):
            eps, x, z = denoise(z, logsnr)
            if callback is not None:
                callback(i, logsnr)
            alpha, sigma = alpha_sigma_host(logsnr)
            alpha_next, sigma_next = alpha_sigma_host(logsnr_next)
            # z_from_x_eps (α' x̂ + σ' ε̂) written in place: add_(alpha=) rounds unlike a + s*b (1e-7..4e-5 apart)
            z_euler = (alpha_next * x).add_(eps, alpha=sigma_next)
            if i == last:
                z = z_euler
                break
            eps_euler, _, z_euler = denoise(z_euler, logsnr_next)
            # α'(σ'_ve - σ_ve) = σ' - α' σ / α  (negative: σ_ve falls)
            z = z_euler.add_(eps_euler - eps, alpha=0.5 * (sigma_next - alpha_next * sigma / alpha))
        return _finish(z, logsnrs[-1], denoise.x_bound)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m": sample_dpmpp_3m,
    "heun": sample_heun,
}

STOCHASTIC_SAMPLERS = frozenset({"ancestral", "dpmpp_2m_sde"})  # draw noise at every step, not only z_0


def nfe_per_sample(sampler: str, steps: int) -> int:
    """eps_fn calls of one unguided run: ``steps``, or 2·steps - 1 for Heun (a guided call counts once here)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    return 2 * steps - 1 if sampler == "heun" else steps
