"""The exact Gaussian-mixture testbed against autograd and direct computation."""

import math

import pytest
import torch

from cfgdiff.core.toy import GaussianMixture


@pytest.fixture
def mixture():
    means = torch.tensor([[0.0, 1.0], [-1.0, -0.5], [1.2, -0.3]], dtype=torch.float64)
    stds = torch.tensor([[0.3, 0.2], [0.25, 0.4], [0.5, 0.35]], dtype=torch.float64)
    return GaussianMixture(means, stds, weights=torch.tensor([0.5, 0.3, 0.2]))


def _points(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    logsnr = torch.linspace(-6, 8, n, dtype=torch.float64)
    return z, logsnr


def test_eps_is_minus_sigma_times_autograd_score(mixture):
    z, logsnr = _points()
    for label in range(mixture.num_classes + 1):
        labels = torch.full((z.shape[0],), label)
        zg = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mixture.log_marginal(zg, logsnr, labels).sum(), zg)
        sigma = torch.sigmoid(-logsnr).sqrt()[:, None]
        torch.testing.assert_close(mixture.eps(z, logsnr, labels), -sigma * grad, rtol=1e-10, atol=1e-12)


def test_marginal_matches_direct_density(mixture):
    # p(z_λ) = Σ π_k N(α μ_k, α² s_k² + σ²) evaluated directly with torch.distributions
    z, logsnr = _points()
    alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
    dens = torch.zeros(z.shape[0], dtype=torch.float64)
    for k in range(3):
        scale = torch.sqrt(alpha[:, None] ** 2 * mixture.stds[k] ** 2 + sigma[:, None] ** 2)
        normal = torch.distributions.Normal(alpha[:, None] * mixture.means[k], scale)
        dens += mixture.weights[k] * normal.log_prob(z).sum(-1).exp()
    torch.testing.assert_close(mixture.log_marginal(z, logsnr), dens.log(), rtol=1e-10, atol=1e-12)


def test_class_posterior_is_bayes_and_gradient_matches_autograd(mixture):
    z, logsnr = _points()
    log_post = mixture.class_log_prob(z, logsnr)
    torch.testing.assert_close(log_post.exp().sum(-1), torch.ones(z.shape[0], dtype=torch.float64))
    for c in range(3):
        labels = torch.full((z.shape[0],), c)
        expected = (math.log(mixture.weights[c]) + mixture.log_marginal(z, logsnr, labels)
                    - mixture.log_marginal(z, logsnr))
        torch.testing.assert_close(log_post[:, c], expected, rtol=1e-10, atol=1e-10)
        zg = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mixture.log_prob_fn(zg, logsnr, labels).sum(), zg)
        torch.testing.assert_close(mixture.class_log_prob_grad(z, logsnr, labels), grad, rtol=1e-9, atol=1e-10)


def test_sample_statistics(mixture):
    g = torch.Generator().manual_seed(3)
    labels = torch.full((40000,), 2)
    x = mixture.sample(labels, generator=g)
    se = mixture.stds[2] / math.sqrt(40000)
    assert ((x.mean(0) - mixture.means[2]).abs() < 5 * se).all()
    assert ((x.std(0) - mixture.stds[2]).abs() < 5 * mixture.stds[2] / math.sqrt(2 * 40000)).all()
    with pytest.raises(ValueError):
        mixture.sample(torch.tensor([3]))


def test_three_gaussians_and_validation():
    gm = GaussianMixture.three_gaussians()
    assert gm.num_classes == 3 and gm.dim == 2 and gm.means.shape == (3, 2)
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(3, 2), -torch.ones(3))
