"""The λ ↔ t map of discrete-time schedules and the ε / v / x-prediction conversions (no optional package)."""

import math

import pytest
import torch

from cfgdiff.adapters.discrete import (
    TERMINAL_LOGSNR_GAP,
    DiscreteSchedule,
    eps_from_prediction,
    logsnr_grid_from_timesteps,
    prediction_from_eps,
)
from cfgdiff.core.schedule import alpha_sigma


def _linear_alphas_cumprod(steps=1000, beta_start=1e-4, beta_end=0.02):
    """DDPM's linear betas (Ho et al. 2020) and ᾱ_t = prod (1 - β_s), in float64."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


@pytest.fixture(scope="module")
def schedule():
    return DiscreteSchedule(_linear_alphas_cumprod())


def test_logsnr_table_and_range(schedule):
    abar = _linear_alphas_cumprod()
    assert torch.allclose(schedule.logsnrs, torch.log(abar / (1 - abar)), rtol=1e-12, atol=1e-12)
    assert schedule.logsnr_max == pytest.approx(math.log(abar[0] / (1 - abar[0])))
    assert schedule.logsnr_min == pytest.approx(math.log(abar[-1] / (1 - abar[-1])))
    assert schedule.logsnr_min < -10 < schedule.logsnr_max  # linear DDPM betas: about [-10.1, 9.2]


def test_integer_timesteps_map_to_themselves(schedule):
    t = torch.arange(1000)
    assert torch.equal(schedule.t_from_logsnr(schedule.logsnrs[t]), t.to(torch.float64))
    assert torch.equal(schedule.logsnr_from_t(t), schedule.logsnrs)


def test_round_trips_t_logsnr_t_and_logsnr_t_logsnr(schedule):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(500, generator=g, dtype=torch.float64) * 999
    assert torch.allclose(schedule.t_from_logsnr(schedule.logsnr_from_t(t)), t, atol=1e-9)
    lam = schedule.logsnr_min + torch.rand(500, generator=g, dtype=torch.float64) * (
        schedule.logsnr_max - schedule.logsnr_min)
    assert torch.allclose(schedule.logsnr_from_t(schedule.t_from_logsnr(lam)), lam, atol=1e-9)


def test_fractional_t_interpolates_linearly_in_logsnr(schedule):
    i = 400
    lam = 0.25 * schedule.logsnrs[i] + 0.75 * schedule.logsnrs[i + 1]
    assert schedule.t_from_logsnr(lam.reshape(1)).item() == pytest.approx(i + 0.75, abs=1e-9)


def test_logsnr_outside_the_trained_range_is_clamped(schedule):
    lam = torch.tensor([-30.0, 30.0], dtype=torch.float64)
    assert schedule.t_from_logsnr(lam).tolist() == [999.0, 0.0]
    assert schedule.clamp_logsnr(lam).tolist() == [schedule.logsnr_min, schedule.logsnr_max]


def test_float32_logsnr_lands_within_float_error_of_the_timestep(schedule):
    t = torch.tensor([0, 17, 500, 998, 999])
    lam32 = schedule.logsnrs[t].to(torch.float32)
    assert torch.allclose(schedule.t_from_logsnr(lam32), t.to(torch.float64), atol=1e-3)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteSchedule(torch.tensor([0.5, 0.6, 0.4]))
    with pytest.raises(ValueError, match="at least 2"):
        DiscreteSchedule(torch.tensor([0.5]))


def test_zero_terminal_snr_gets_a_finite_range():
    abar = _linear_alphas_cumprod().clone()
    abar[-1] = 0.0
    s = DiscreteSchedule(abar)
    assert math.isfinite(s.logsnr_min) and s.logsnr_min == pytest.approx(math.log(2.0**-24), abs=1e-3)


def test_grid_from_scheduler_timesteps(schedule):
    timesteps = torch.tensor([999, 749, 499, 249, 0])  # descending, as a diffusers scheduler gives them
    grid = logsnr_grid_from_timesteps(schedule, timesteps)
    assert grid.dtype == torch.float64 and grid.shape == (6,)
    assert torch.equal(grid[:-1], schedule.logsnrs[timesteps])
    assert grid[-1].item() == pytest.approx(schedule.logsnrs[0].item() + TERMINAL_LOGSNR_GAP)
    assert bool((grid[1:] > grid[:-1]).all())
    with pytest.raises(ValueError, match="strictly decreasing"):
        logsnr_grid_from_timesteps(schedule, torch.tensor([0, 10]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_conversions_recover_eps(prediction_type):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    logsnr = torch.linspace(-9.0, 9.0, 6, dtype=torch.float64)
    alpha, sigma = (a.reshape(-1, 1, 1, 1) for a in alpha_sigma(logsnr))
    z = alpha * x + sigma * eps
    target = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x, "sample": x}[prediction_type]
    assert torch.allclose(eps_from_prediction(target, z, logsnr, prediction_type), eps, atol=1e-9)
    assert torch.allclose(prediction_from_eps(eps, z, logsnr, prediction_type), target, atol=1e-9)


def test_unknown_prediction_type_is_refused():
    z = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="prediction_type"):
        eps_from_prediction(z, z, torch.zeros(1), "flow")
