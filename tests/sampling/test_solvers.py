"""Fast solvers on the exact mixture: convergence, measured order, the guidance interval and its NFE.

Expectations are derived, not golden: with exact ε (float64) a sampler's error against the mixture is its
discretisation error plus sampling noise; a deterministic ODE solver's per-sample error against a very fine
solution from the same initial noise is its discretisation error alone, whose slope in log-log is its order.
"""

import math

import pytest
import torch

from cfgdiff.core.schedule import logsnr_grid
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.guidance import (
    cfg,
    guidance_interval,
    guidance_interval_sigma,
    guided_fraction,
    logsnr_from_sigma,
    sigma_from_logsnr,
)
from cfgdiff.guidance.counting import CountingEpsFn
from cfgdiff.sampling.solvers import (
    SAMPLERS,
    nfe_per_sample,
    sample_ddim,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m,
    sample_heun,
)
from tests.helpers import RowNet, measured_order, moment_errors_by_steps, sampling_tolerance

NEW_SOLVERS = [sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m, sample_heun]
N_PER_CLASS = 3000


def test_new_solvers_are_registered():
    for name, fn in {"dpmpp_2m": sample_dpmpp_2m, "dpmpp_2m_sde": sample_dpmpp_2m_sde,
                     "dpmpp_3m": sample_dpmpp_3m, "heun": sample_heun}.items():
        assert SAMPLERS[name] is fn
    assert nfe_per_sample("heun", 10) == 19 and nfe_per_sample("dpmpp_2m", 10) == 10


@pytest.mark.parametrize("sampler", NEW_SOLVERS, ids=lambda f: f.__name__)
def test_exact_scores_reproduce_mixture_as_steps_grow(gm, sampler):
    errors = moment_errors_by_steps(sampler, gm, N_PER_CLASS, (3, 32))
    assert errors[32] < sampling_tolerance(gm, N_PER_CLASS), errors
    assert errors[3] > errors[32], errors


def test_dpmpp_2m_error_falls_faster_than_ddim(gm):
    """Per-sample ODE error against a 3M solution on 1000 uniform-λ steps from the same z: DDIM is 1st order,
    DPM-Solver++(2M), 3M and Heun are higher order (measured order > 1, 2M's above DDIM's)."""
    labels = torch.arange(3).repeat_interleave(100)
    z0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = sample_dpmpp_3m(gm, (300, 2), labels, steps=1000, z=z0, dtype=torch.float64, grid="uniform")
    order_ddim, err_ddim = measured_order(sample_ddim, gm, z0, labels, reference)
    order_2m, err_2m = measured_order(sample_dpmpp_2m, gm, z0, labels, reference)
    order_heun, _ = measured_order(sample_heun, gm, z0, labels, reference)
    order_3m, _ = measured_order(sample_dpmpp_3m, gm, z0, labels, reference)
    assert 0.7 < order_ddim < 1.3, (order_ddim, err_ddim)
    assert order_2m > 1.3 and order_2m > order_ddim + 0.4, (order_2m, err_2m)
    assert err_2m[-1] < err_ddim[-1] / 5
    assert order_heun > 1.5 and order_3m > 1.5, (order_heun, order_3m)


def test_sde_with_eta_zero_is_the_ode(gm):
    labels = torch.tensor([0, 1, 2, 0])
    z0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ode = sample_dpmpp_2m(gm, (4, 2), labels, steps=12, z=z0, dtype=torch.float64)
    sde = sample_dpmpp_2m_sde(gm, (4, 2), labels, steps=12, z=z0, dtype=torch.float64, eta=0.0)
    torch.testing.assert_close(ode, sde, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler", NEW_SOLVERS, ids=lambda f: f.__name__)
def test_single_and_per_row_generators(gm, sampler):
    """One generator: reproducible; B generators: row i depends only on generator i."""
    labels = torch.tensor([0, 1, 2])
    a = sampler(gm, (3, 2), labels, steps=6, generator=torch.Generator().manual_seed(5))
    b = sampler(gm, (3, 2), labels, steps=6, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    rows = sampler(gm, (3, 2), labels, steps=6, generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    alone = sampler(gm, (1, 2), labels[1:2], steps=6, generator=[torch.Generator().manual_seed(8)])
    torch.testing.assert_close(rows[1:2], alone, rtol=0, atol=0)
    with pytest.raises(ValueError):
        sampler(gm, (3, 2), labels, steps=6, generator=[torch.Generator()])


def _evaluation_logsnrs(name, grid):
    """The λs at which a sampler calls the eps_fn: every grid point but the last; Heun adds its correctors."""
    lams = [float(v) for v in grid[:-1]]
    return lams + [float(v) for v in grid[1:-1]] if name == "heun" else lams


@pytest.mark.parametrize("name", ["ddim", "ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m", "heun"])
def test_interval_saves_exactly_the_calls_outside_it(name):
    """Inside the interval a step is one call of 2B rows, outside one call of B rows: rows = B (n + n_in)."""
    net, batch, steps = RowNet(), 4, 12
    labels = torch.tensor([0, 1, 2, 0])
    sigma_lo, sigma_hi = 0.3, 3.0
    schedule = guidance_interval_sigma(2.0, sigma_lo=sigma_lo, sigma_hi=sigma_hi)
    grid = logsnr_grid(steps, "cosine")
    lams = _evaluation_logsnrs(name, grid)
    inside = [lam for lam in lams if sigma_lo < sigma_from_logsnr(lam) <= sigma_hi]
    assert 0 < len(inside) < len(lams)
    counted = CountingEpsFn(net)
    SAMPLERS[name](cfg(counted, schedule), (batch, 2), labels, steps=steps, grid=grid,
                   generator=torch.Generator().manual_seed(0))
    assert counted.calls == len(lams) == nfe_per_sample(name, steps)
    assert counted.rows == batch * (len(lams) + len(inside))
    assert sorted(counted.batch_sizes) == sorted([2 * batch] * len(inside) + [batch] * (len(lams) - len(inside)))
    assert guided_fraction(schedule, lams) == pytest.approx(len(inside) / len(lams))
    full = CountingEpsFn(net)
    SAMPLERS[name](cfg(full, 2.0), (batch, 2), labels, steps=steps, grid=grid,
                   generator=torch.Generator().manual_seed(0))
    assert full.rows - counted.rows == batch * (len(lams) - len(inside))  # the calls saved


@pytest.mark.parametrize("sampler", [sample_dpmpp_2m, sample_heun, sample_dpmpp_2m_sde], ids=lambda f: f.__name__)
def test_interval_covering_everything_is_cfg_and_empty_is_conditional(gm, sampler):
    labels = torch.arange(3).repeat(4)
    kw = dict(steps=10, dtype=torch.float64)
    w = 3.0

    def run(eps_fn):
        return sampler(eps_fn, (12, 2), labels, generator=torch.Generator().manual_seed(1), **kw)

    plain = run(cfg(gm, w))
    everything = run(cfg(gm, guidance_interval(w, logsnr_lo=-20.0, logsnr_hi=20.0)))
    everything_sigma = run(cfg(gm, guidance_interval_sigma(w, sigma_lo=0.0, sigma_hi=math.inf)))
    torch.testing.assert_close(everything, plain, rtol=0, atol=0)
    torch.testing.assert_close(everything_sigma, plain, rtol=0, atol=0)
    conditional = run(gm)
    empty = run(cfg(gm, guidance_interval(w, logsnr_lo=50.0, logsnr_hi=60.0)))
    torch.testing.assert_close(empty, conditional, rtol=0, atol=0)
    assert not torch.allclose(plain, conditional)


def test_sigma_interval_maps_to_logsnr():
    schedule = guidance_interval_sigma(1.5, sigma_lo=0.28, sigma_hi=2.9)
    lam_lo, lam_hi = logsnr_from_sigma(2.9), logsnr_from_sigma(0.28)  # λ in [-2 log σ_hi, -2 log σ_lo)
    assert lam_lo == pytest.approx(-2 * math.log(2.9)) and sigma_from_logsnr(lam_hi) == pytest.approx(0.28)
    assert schedule(lam_lo) == 1.5 and schedule(0.5 * (lam_lo + lam_hi)) == 1.5
    assert schedule(lam_hi) == 0.0  # σ = σ_lo is outside (σ_lo, σ_hi]
    assert schedule(lam_lo - 1e-9) == 0.0 and schedule(lam_hi + 1.0) == 0.0
    with pytest.raises(ValueError):
        guidance_interval_sigma(1.0, sigma_lo=3.0, sigma_hi=1.0)


def test_schedule_reads_the_host_logsnr_not_the_device():
    """Samplers pass λ as a float (``HostLogsnrEpsFn.eps_at``), so a weight schedule is looked up without reading the
    tensor."""
    seen = []

    def schedule(logsnr: float) -> float:
        seen.append(logsnr)
        return 0.0

    labels = torch.tensor([0, 1])
    grid = logsnr_grid(5, "uniform")
    sample_dpmpp_2m(cfg(GaussianMixture.three_gaussians(), schedule), (2, 2), labels, steps=5, grid=grid,
                    generator=torch.Generator().manual_seed(0))
    assert seen == [float(v) for v in grid[:-1]]


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("sampler", NEW_SOLVERS, ids=lambda f: f.__name__)
def test_few_steps_run_and_count(gm, sampler, steps):
    counted = CountingEpsFn(gm)
    x = sampler(counted, (3, 2), torch.tensor([0, 1, 2]), steps=steps, generator=torch.Generator().manual_seed(0),
                dtype=torch.float64)
    assert torch.isfinite(x).all() and counted.calls == nfe_per_sample(
        "heun" if sampler is sample_heun else "dpmpp_2m", steps)


def test_clip_x_bounds_solver_outputs():
    gm = GaussianMixture(torch.tensor([[3.0, -3.0]]), torch.tensor([0.1]))
    labels = torch.zeros(32, dtype=torch.long)
    for sampler in NEW_SOLVERS:
        x = sampler(gm, (32, 2), labels, steps=10, clip_x=True, generator=torch.Generator().manual_seed(0))
        assert x.abs().max() <= 1.0 and torch.isfinite(x).all()


def test_validation(gm):
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError):
        sample_dpmpp_2m(gm, (2, 2), labels, steps=0)
    with pytest.raises(ValueError):
        sample_dpmpp_2m_sde(gm, (2, 2), labels, eta=-1.0)
    with pytest.raises(ValueError):
        sample_heun(gm, (3, 2), labels, steps=4)
    with pytest.raises(ValueError):
        sample_dpmpp_3m(gm, (2, 2), labels, grid=torch.tensor([0.0, -1.0]))
