"""k-diffusion's denoiser convention both ways, checked on the exact Gaussian mixture.

The wrappers need no k-diffusion; the sampler comparisons use ``k_diffusion.sampling`` and skip with the reason
when it cannot be imported (install: pip install --no-deps k-diffusion torchdiffeq torchsde trampoline).
"""

import math

import pytest
import torch

from cfgdiff.adapters.kdiffusion import (
    from_kdiffusion,
    kdiffusion_sampling,
    logsnr_grid_from_sigmas,
    sigmas_from_logsnr_grid,
    to_kdiffusion,
)
from cfgdiff.core.schedule import alpha_sigma, logsnr_grid
from cfgdiff.guidance import cfg
from cfgdiff.sampling.solvers import sample_ddim, sample_dpmpp_2m


def _points(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64) * 2
    logsnr = torch.linspace(-8.0, 8.0, n, dtype=torch.float64)
    labels = torch.arange(n) % 4  # 0..2 and the null label 3
    return z, logsnr, labels


def test_denoiser_is_x_hat_in_the_ve_convention(gm):
    z, logsnr, labels = _points()
    alpha, sigma = alpha_sigma(logsnr)
    denoiser = to_kdiffusion(gm)
    x_ve, sigma_ve = z / alpha[:, None], torch.exp(-0.5 * logsnr)
    assert torch.allclose(sigma_ve, sigma / alpha)  # σ_ve = σ/α = e^{-λ/2}
    x_hat = (z - sigma[:, None] * gm(z, logsnr, labels)) / alpha[:, None]
    assert torch.allclose(denoiser(x_ve, sigma_ve, class_cond=labels), x_hat, atol=1e-10)
    assert denoiser.num_classes == gm.num_classes


def test_round_trip_cfgdiff_to_kdiffusion_to_cfgdiff_gives_the_same_eps(gm):
    z, logsnr, labels = _points()
    for eps_fn in (gm, cfg(gm, 2.0)):
        back = from_kdiffusion(to_kdiffusion(eps_fn), eps_fn.num_classes)
        assert back.num_classes == gm.num_classes
        assert torch.allclose(back(z, logsnr, labels), eps_fn(z, logsnr, labels), atol=1e-9)


def test_missing_labels_keyword_is_one_clear_error(gm):
    with pytest.raises(ValueError, match="class_cond"):
        to_kdiffusion(gm)(torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))


def test_sigma_and_logsnr_grids_convert_both_ways():
    grid = logsnr_grid(10, "edm", logsnr_min=-2 * math.log(80.0), logsnr_max=2 * math.log(500.0))
    sigmas = sigmas_from_logsnr_grid(grid)
    assert sigmas[-1].item() == 0.0 and sigmas[0].item() == pytest.approx(80.0)
    back = logsnr_grid_from_sigmas(sigmas)
    assert torch.allclose(back[:-1], grid[:-1]) and back[-1].item() == pytest.approx(grid[-2].item() + 40.0)


def test_cfgdiff_samplers_on_the_wrapped_denoiser_match_the_original(gm):
    labels = torch.arange(3).repeat(20)
    for w in (0.0, 3.0):
        wrapped = from_kdiffusion(to_kdiffusion(cfg(gm, w)), gm.num_classes)
        kwargs = dict(steps=12, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                      logsnr_min=-12.0, logsnr_max=12.0)
        a = sample_dpmpp_2m(cfg(gm, w), (60, 2), labels, **kwargs)
        kwargs["generator"] = torch.Generator().manual_seed(0)
        b = sample_dpmpp_2m(wrapped, (60, 2), labels, **kwargs)
        assert torch.allclose(a, b, atol=1e-8)


@pytest.fixture(scope="module")
def ksampling():
    try:
        return kdiffusion_sampling()
    except ImportError as err:
        pytest.skip(f"k-diffusion's sampling module is not importable: {err}")


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_kdiffusion_dpmpp_2m_on_a_cfgdiff_model_equals_cfgdiff_dpmpp_2m(gm, ksampling, w):
    """k-diffusion's sample_dpmpp_2m over to_kdiffusion(cfg(gm, w)) and cfgdiff's over cfg(gm, w) on the same grid
    and initial noise: the same algorithm (x̂ history in t = -log σ_ve, first-order step to σ = 0)."""
    labels = torch.arange(3).repeat(20)
    grid = logsnr_grid(15, "cosine", logsnr_min=-10.0, logsnr_max=10.0)
    grid[-1] = grid[-2] + 40.0  # the last step's target: σ_ve = 0 in k-diffusion, e^{-20} σ_ve here
    z0 = torch.randn(60, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = sample_dpmpp_2m(cfg(gm, w), (60, 2), labels, grid=grid, z=z0, dtype=torch.float64)
    sigmas = sigmas_from_logsnr_grid(grid)
    alpha0 = alpha_sigma(grid[0])[0]
    theirs = ksampling.sample_dpmpp_2m(to_kdiffusion(cfg(gm, w)), z0 / alpha0, sigmas,
                                       extra_args={"class_cond": labels}, disable=True)
    assert torch.allclose(ours, theirs, atol=1e-7), (ours - theirs).abs().max()


def test_kdiffusion_euler_equals_cfgdiff_ddim(gm, ksampling):
    """Euler in (x_ve, σ_ve) is DDIM (η = 0); both return x̂ of the last evaluation."""
    labels = torch.arange(3).repeat(10)
    grid = logsnr_grid(20, "uniform", logsnr_min=-8.0, logsnr_max=8.0)
    z0 = torch.randn(30, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = sample_ddim(cfg(gm, 1.0), (30, 2), labels, grid=grid, z=z0, dtype=torch.float64)
    theirs = ksampling.sample_euler(to_kdiffusion(cfg(gm, 1.0)), z0 / alpha_sigma(grid[0])[0],
                                    sigmas_from_logsnr_grid(grid), extra_args={"class_cond": labels}, disable=True)
    assert torch.allclose(ours, theirs, atol=1e-7), (ours - theirs).abs().max()


def test_cfgdiff_sampler_on_a_kdiffusion_denoiser_equals_kdiffusion_sampler(gm, ksampling):
    """The other way: a k-diffusion-convention denoiser (x, σ) -> D under cfgdiff's sampler and guidance equals
    k-diffusion's sampler with the guidance done in D space (CFG is linear, so D_cfg = (1+w) D_c - w D_u)."""
    k_model = to_kdiffusion(gm)  # stands for a k-diffusion model: a plain denoiser D(x, σ, class_cond=...)

    def k_cfg(x, sigma, class_cond):  # k-diffusion's CFG wrapper, in its scale s = w + 1
        s = 3.0
        d = k_model(torch.cat([x, x]), torch.cat([sigma, sigma]), class_cond=torch.cat(
            [class_cond, torch.full_like(class_cond, 3)]))
        d_c, d_u = d.chunk(2)
        return d_u + s * (d_c - d_u)

    labels = torch.arange(3).repeat(10)
    grid = logsnr_grid(15, "cosine", logsnr_min=-10.0, logsnr_max=10.0)
    grid[-1] = grid[-2] + 40.0
    z0 = torch.randn(30, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = sample_dpmpp_2m(cfg(from_kdiffusion(k_model, 3), 2.0), (30, 2), labels, grid=grid, z=z0,
                           dtype=torch.float64)
    theirs = ksampling.sample_dpmpp_2m(k_cfg, z0 / alpha_sigma(grid[0])[0], sigmas_from_logsnr_grid(grid),
                                       extra_args={"class_cond": labels}, disable=True)
    assert torch.allclose(ours, theirs, atol=1e-7), (ours - theirs).abs().max()
