"""Diffusion math against independent derivations (Gaussian conditioning in float64)."""

import math

import pytest
import torch

from cfgdiff.core.diffusion import (
    alpha_sigma_rows,
    diffuse,
    eps_from_x,
    forward_transition,
    logsnr_from_sigma_ve,
    posterior_coefficients,
    posterior_mean,
    posterior_variance,
    predict_eps_from_x,
    predict_x_from_eps,
    reverse_log_variance,
    reverse_std,
    reverse_variance,
    sigma_ve_from_logsnr,
    x_from_eps,
    z_from_x_eps,
)
from cfgdiff.core.schedule import alpha_sigma, alpha_sigma_host, log_sigmoid_host

PAIRS = [(-20.0, -19.9), (-5.0, 3.0), (0.0, 0.01), (10.0, 20.0), (19.99, 20.0), (-20.0, 20.0)]


def _alpha_sigma64(lam):
    return alpha_sigma(torch.tensor(lam, dtype=torch.float64))


def test_x_eps_round_trip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    logsnr = torch.tensor([-20.0, -3.0, 0.0, 2.5, 10.0, 20.0], dtype=torch.float64)
    z = diffuse(x=x, eps=eps, logsnr=logsnr)
    torch.testing.assert_close(predict_x_from_eps(z=z, eps=eps, logsnr=logsnr)[1:], x[1:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(predict_eps_from_x(z=z, x=x, logsnr=logsnr)[:-1], eps[:-1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("lam, lam_next", PAIRS)
def test_posterior_equals_gaussian_conditioning(lam, lam_next):
    # Joint of (z_λ, z_λ') given x: z_λ' = α' x + σ' ε', z_λ = (α/α') z_λ' + σ_{λ|λ'} η. Condition on z_λ.
    a, s = _alpha_sigma64(lam)
    a2, s2 = _alpha_sigma64(lam_next)
    var_z, var_z2, cov = s**2, s2**2, (a / a2) * s2**2
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    mean_expected = a2 * x + cov / var_z * (z - a * x)
    var_expected = var_z2 - cov**2 / var_z
    mean = posterior_mean(z=z, x=x, logsnr=lam, logsnr_next=lam_next)
    var = posterior_variance(logsnr=torch.tensor(lam, dtype=torch.float64),
                             logsnr_next=torch.tensor(lam_next, dtype=torch.float64))
    torch.testing.assert_close(mean, mean_expected, rtol=1e-9, atol=1e-12)
    assert var.item() == pytest.approx(var_expected.item(), rel=1e-6, abs=1e-300)


@pytest.mark.parametrize("lam, lam_next", PAIRS)
def test_forward_transition_consistent_with_marginals(lam, lam_next):
    # Var(z_λ) = (α/α')² σ'² + σ²_{λ|λ'} must equal σ_λ² (the marginal), and the scale α/α'.
    scale, var = forward_transition(logsnr=torch.tensor(lam, dtype=torch.float64),
                                    logsnr_next=torch.tensor(lam_next, dtype=torch.float64))
    a, s = _alpha_sigma64(lam)
    a2, s2 = _alpha_sigma64(lam_next)
    assert scale.item() == pytest.approx((a / a2).item(), rel=1e-12)
    assert (scale**2 * s2**2 + var).item() == pytest.approx((s**2).item(), rel=1e-9)


def test_reverse_variance_interpolates_in_log_space():
    lam, lam_next = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    post = posterior_variance(logsnr=lam, logsnr_next=lam_next)
    _, fwd = forward_transition(logsnr=lam, logsnr_next=lam_next)
    torch.testing.assert_close(reverse_variance(logsnr=lam, logsnr_next=lam_next, v_interp=0.0), post)
    torch.testing.assert_close(reverse_variance(logsnr=lam, logsnr_next=lam_next, v_interp=1.0), fwd)
    for v in (0.2, 0.3, 0.7):
        expected = post ** (1 - v) * fwd**v
        torch.testing.assert_close(reverse_variance(logsnr=lam, logsnr_next=lam_next, v_interp=v), expected)
    with pytest.raises(ValueError):
        reverse_variance(logsnr=lam, logsnr_next=lam_next, v_interp=1.5)


def test_float32_finite_over_range_with_tiny_steps():
    lam = torch.linspace(-20, 20 - 1e-3, 2001, dtype=torch.float32)
    lam_next = lam + 1e-3
    for value in (
        posterior_variance(logsnr=lam, logsnr_next=lam_next),
        reverse_variance(logsnr=lam, logsnr_next=lam_next, v_interp=0.3),
        forward_transition(logsnr=lam, logsnr_next=lam_next)[1],
    ):
        assert torch.isfinite(value).all() and (value > 0).all()
    # relative accuracy of 1 - e^{λ-λ'} via expm1 with a float32 step of 1e-3 (no catastrophic cancellation)
    var = posterior_variance(logsnr=lam.double(), logsnr_next=lam_next.double())
    var32 = posterior_variance(logsnr=lam, logsnr_next=lam_next)
    assert ((var32.double() - var) / var).abs().max() < 1e-3
    z = torch.randn(2001, 2)
    mean = posterior_mean(z=z, x=z, logsnr=lam, logsnr_next=lam_next)
    assert torch.isfinite(mean).all()
    assert math.isfinite(float(reverse_variance(logsnr=-20.0, logsnr_next=20.0, v_interp=0.3)))


# Host (Python float) forms against the tensor forms in float64, over λ from -20 to 20.
HOST_LOGSNRS = [-20.0, -19.5, -12.0, -3.0, -0.5, 0.0, 0.25, 4.0, 11.0, 19.9, 20.0]
HOST_PAIRS = [(a, b) for a in HOST_LOGSNRS for b in HOST_LOGSNRS if a < b]


@pytest.mark.parametrize("lam", HOST_LOGSNRS)
def test_host_alpha_sigma_and_log_sigmoid_equal_the_tensor_versions(lam):
    alpha, sigma = alpha_sigma_host(lam)
    a, s = _alpha_sigma64(lam)
    assert alpha == pytest.approx(float(a), rel=1e-15, abs=0) and sigma == pytest.approx(float(s), rel=1e-15, abs=0)
    for t in (lam, -lam):
        assert log_sigmoid_host(t) == pytest.approx(
            float(torch.nn.functional.logsigmoid(torch.tensor(t, dtype=torch.float64))), rel=1e-14, abs=1e-300)


@pytest.mark.parametrize("lam, lam_next", HOST_PAIRS)
def test_host_posterior_coefficients_equal_posterior_mean(lam, lam_next):
    coef_z, coef_x = posterior_coefficients(logsnr=lam, logsnr_next=lam_next)
    one = torch.ones(1, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    # μ̃ is linear in (z, x): its value at (1, 0) is coef_z and at (0, 1) coef_x
    assert coef_z == pytest.approx(float(posterior_mean(z=one, x=zero, logsnr=lam, logsnr_next=lam_next)),
                                   rel=1e-14, abs=0)
    assert coef_x == pytest.approx(float(posterior_mean(z=zero, x=one, logsnr=lam, logsnr_next=lam_next)),
                                   rel=1e-14, abs=0)


@pytest.mark.parametrize("v_interp", [0.0, 0.2, 0.3, 1.0])
@pytest.mark.parametrize("lam, lam_next", HOST_PAIRS)
def test_host_reverse_log_variance_and_std_equal_reverse_variance(lam, lam_next, v_interp):
    var = reverse_variance(logsnr=torch.tensor(lam, dtype=torch.float64),
                           logsnr_next=torch.tensor(lam_next, dtype=torch.float64), v_interp=v_interp)
    log_var = reverse_log_variance(logsnr=lam, logsnr_next=lam_next, v_interp=v_interp)
    assert log_var == pytest.approx(float(torch.log(var)), rel=1e-13, abs=1e-13)
    assert reverse_std(logsnr=lam, logsnr_next=lam_next, v_interp=v_interp) == pytest.approx(
        math.sqrt(float(var)), rel=1e-13, abs=0)
    if v_interp == 0.0:  # v = 0 is the posterior variance σ̃²
        assert math.exp(log_var) == pytest.approx(float(posterior_variance(
            logsnr=torch.tensor(lam, dtype=torch.float64), logsnr_next=torch.tensor(lam_next, dtype=torch.float64))),
            rel=1e-13, abs=0)


def test_host_step_functions_refuse_the_wrong_direction_and_v():
    with pytest.raises(ValueError):
        posterior_coefficients(logsnr=1.0, logsnr_next=1.0)
    with pytest.raises(ValueError):
        reverse_log_variance(logsnr=2.0, logsnr_next=1.0, v_interp=0.3)
    with pytest.raises(ValueError):
        reverse_std(logsnr=0.0, logsnr_next=1.0, v_interp=1.5)


def test_coefficient_forms_are_the_logsnr_forms():
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    logsnr = torch.tensor([-20.0, -2.0, 0.0, 3.0, 20.0], dtype=torch.float64)
    alpha, sigma = alpha_sigma_rows(logsnr, z)
    assert alpha.shape == (5, 1) and alpha.dtype == z.dtype
    x = x_from_eps(z=z, eps=eps, alpha=alpha, sigma=sigma)
    assert torch.equal(x, predict_x_from_eps(z=z, eps=eps, logsnr=logsnr))
    assert torch.equal(eps_from_x(z=z, x=x, alpha=alpha, sigma=sigma), predict_eps_from_x(z=z, x=x, logsnr=logsnr))
    assert torch.equal(z_from_x_eps(x=x, eps=eps, alpha=alpha, sigma=sigma), diffuse(x=x, eps=eps, logsnr=logsnr))
    # with Python-float coefficients (the samplers' form): the same arithmetic as writing it out
    a, s = alpha_sigma_host(-3.0)
    assert torch.equal(x_from_eps(z=z, eps=eps, alpha=a, sigma=s), (z - s * eps) / a)


def test_sigma_ve_and_logsnr_round_trip_on_the_host_and_in_tensors():
    """σ_ve = e^{-λ/2} = σ/α and λ = -2 log σ_ve: inverse maps, the host float equal to the float64 tensor value."""
    logsnr = torch.linspace(-20.0, 20.0, 81, dtype=torch.float64)
    sigma_ve = sigma_ve_from_logsnr(logsnr)
    alpha, sigma = alpha_sigma(logsnr)
    torch.testing.assert_close(sigma_ve, sigma / alpha, rtol=1e-12, atol=0)
    torch.testing.assert_close(logsnr_from_sigma_ve(sigma_ve), logsnr, rtol=0, atol=1e-12)
    for lam in logsnr.tolist():
        assert sigma_ve_from_logsnr(lam) == pytest.approx(float(sigma_ve_from_logsnr(torch.tensor(lam,
                                                                      dtype=torch.float64))), rel=1e-15)
        assert logsnr_from_sigma_ve(sigma_ve_from_logsnr(lam)) == pytest.approx(lam, abs=1e-12)
    assert logsnr_from_sigma_ve(math.inf) == -math.inf
    with pytest.raises(ValueError, match="positive"):
        logsnr_from_sigma_ve(0.0)

