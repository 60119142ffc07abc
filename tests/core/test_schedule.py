"""Schedule: derived identities of the log-SNR maps and grids."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from cfgdiff.core.schedule import (
    alpha_sigma,
    logsnr_cosine,
    logsnr_cosine_cdf,
    logsnr_grid,
    logsnr_uniform,
    sample_logsnr,
    u_from_logsnr_cosine,
)


def test_alpha_sigma_variance_preserving_and_finite_float32():
    logsnr = torch.linspace(-20, 20, 4001, dtype=torch.float32)
    alpha, sigma = alpha_sigma(logsnr)
    assert torch.isfinite(alpha).all() and torch.isfinite(sigma).all()
    assert (alpha > 0).all() and (sigma > 0).all()
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(logsnr), atol=2e-7, rtol=0)
    # log(α²/σ²) recovers λ, relatively exact even at the ends where one of them is ~1e-9
    torch.testing.assert_close(torch.log(alpha**2) - torch.log(sigma**2), logsnr, atol=1e-5, rtol=1e-6)
    # exact endpoints against float64
    for lam in (-20.0, 20.0):
        a, s = alpha_sigma(torch.tensor(lam, dtype=torch.float32))
        assert a.item() == pytest.approx(math.sqrt(1 / (1 + math.exp(-lam))), rel=1e-6)
        assert s.item() == pytest.approx(math.sqrt(1 / (1 + math.exp(lam))), rel=1e-6)


def test_cosine_endpoints_and_round_trip():
    assert logsnr_cosine(torch.tensor(0.0, dtype=torch.float64)).item() == pytest.approx(20.0, abs=1e-9)
    assert logsnr_cosine(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(-20.0, abs=1e-9)
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(u_from_logsnr_cosine(logsnr_cosine(u)), u, atol=1e-12, rtol=0)
    lam = torch.linspace(-20, 20, 1001, dtype=torch.float64)
    torch.testing.assert_close(logsnr_cosine(u_from_logsnr_cosine(lam)), lam, atol=1e-9, rtol=0)
    # float32 input is computed in float64 and returned finite at the ends
    lam32 = logsnr_cosine(torch.tensor([0.0, 1.0]))
    assert lam32.dtype == torch.float32
    torch.testing.assert_close(lam32, torch.tensor([20.0, -20.0]))
    # monotone decreasing
    assert (logsnr_cosine(u).diff() < 0).all()


def test_cosine_is_cosine_schedule_at_infinite_range():
    # with λ = -2 log tan(π u / 2) (unclipped), α² = cos²(π u / 2): the "cosine" name
    u = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    lam = logsnr_cosine(u, logsnr_min=-200.0, logsnr_max=200.0)
    alpha, _ = alpha_sigma(lam)
    torch.testing.assert_close(alpha**2, torch.cos(math.pi * u / 2) ** 2, atol=1e-12, rtol=0)


def test_sampled_logsnr_matches_cosine_density_ks():
    g = torch.Generator().manual_seed(123)
    lam = sample_logsnr(20000, "cosine", generator=g).double().numpy()
    result = stats.kstest(lam, lambda v: logsnr_cosine_cdf(torch.from_numpy(np.asarray(v))).numpy())
    assert result.pvalue > 1e-3
    # and it is not uniform: the uniform CDF is rejected
    uniform = stats.kstest(lam, stats.uniform(loc=-20, scale=40).cdf)
    assert uniform.pvalue < 1e-6


def test_uniform_map_and_samples():
    assert logsnr_uniform(torch.tensor(0.0)).item() == 20.0
    assert logsnr_uniform(torch.tensor(1.0)).item() == -20.0
    lam = sample_logsnr(20000, "uniform", generator=torch.Generator().manual_seed(1)).numpy()
    assert stats.kstest(lam, stats.uniform(loc=-20, scale=40).cdf).pvalue > 1e-3
    with pytest.raises(ValueError):
        sample_logsnr(4, "linear")


@pytest.mark.parametrize("kind", ["cosine", "uniform", "edm"])
def test_grids_ascend_between_exact_endpoints(kind):
    grid = logsnr_grid(17, kind, logsnr_min=-15.0, logsnr_max=12.0)
    assert grid.dtype == torch.float64 and grid.shape == (18,)
    assert grid[0].item() == -15.0 and grid[-1].item() == 12.0
    assert (grid.diff() > 0).all()


def test_edm_grid_formula():
    steps, rho = 10, 7.0
    grid = logsnr_grid(steps, "edm", logsnr_min=-2 * math.log(80.0), logsnr_max=-2 * math.log(0.002), rho=rho)
    sigma = torch.exp(-grid / 2)
    i = torch.arange(steps + 1, dtype=torch.float64)
    expected = (80.0 ** (1 / rho) + i / steps * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    torch.testing.assert_close(sigma, expected, rtol=1e-10, atol=0)


def test_grid_rejects_bad_steps():
    with pytest.raises(ValueError):
        logsnr_grid(0)
    with pytest.raises(ValueError):
        logsnr_grid(4, "sqrt")
