"""An exact testbed: a Gaussian mixture whose classes are its components.

Class k has weight π_k, mean μ_k and diagonal covariance diag(s_k²). Under the forward process
z_λ = α x + σ ε the marginals stay Gaussian mixtures:

    p(z_λ | c) = N(α μ_c, α² s_c² + σ²),      p(z_λ) = Σ_k π_k N(α μ_k, α² s_k² + σ²),

so the exact noise prediction ε*(z, λ, c) = -σ ∇_z log p(z_λ | c) and the unconditional
ε*(z, λ) = -σ ∇_z log p(z_λ) are closed-form, and so is the Bayes classifier p(c | z_λ).
A ``GaussianMixture`` is itself an eps_fn (label K = ``num_classes`` is the unconditional marginal).
"""

from __future__ import annotations

import math

import torch

from cfgdiff.core.schedule import alpha_sigma


class GaussianMixture:
    """K-class Gaussian mixture in D dimensions with exact scores.

    Args:
        means: [K, D] class means μ_k.
        stds: [K, D] per-dimension or [K] isotropic standard deviations s_k.
        weights: [K] class weights π_k (normalised here); uniform by default.
    """

    def __init__(
        self,
        means: torch.Tensor,
        stds: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(means.shape)}")
        num_classes, dim = means.shape
        if stds.ndim == 1:
            stds = stds[:, None].expand(num_classes, dim)
        if stds.shape != means.shape:
            raise ValueError(f"stds must be [K] or [K, D] = {tuple(means.shape)}, got {tuple(stds.shape)}")
        if not bool((stds > 0).all()):
            raise ValueError("stds must be positive")
        if weights is None:
            weights = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (num_classes,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be [K] = [{num_classes}] and positive")
        self.means = means  # [K, D]
        self.stds = stds.clone()  # [K, D]
        self.weights = weights / weights.sum()  # [K]
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.data_shape = (self.dim,)

    @classmethod
    def three_gaussians(cls) -> GaussianMixture:
        """Three isotropic 2-D Gaussians on a triangle, equal weights: the setting of the paper's Figure 2."""
        angles = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180.0
        means = 0.6 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(means, torch.full((3,), 0.22, dtype=torch.float64))

    # -- marginals of z_λ ---------------------------------------------------------------------------------

    def _params(
        self, z: torch.Tensor, logsnr: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-row α, σ [B, 1] and per-component marginal means α μ_k and variances α² s_k² + σ² [B, K, D]."""
        logsnr = torch.as_tensor(logsnr, device=z.device)
        if logsnr.ndim == 0:
            logsnr = logsnr.expand(z.shape[0])
        alpha, sigma = alpha_sigma(logsnr.to(torch.float64))
        alpha, sigma = alpha.to(z.dtype)[:, None], sigma.to(z.dtype)[:, None]  # [B, 1]
        means = self.means.to(device=z.device, dtype=z.dtype)
        stds = self.stds.to(device=z.device, dtype=z.dtype)
        mean_k = alpha[:, None, :] * means[None]  # [B, K, D]
        var_k = alpha[:, None, :] ** 2 * stds[None] ** 2 + sigma[:, None, :] ** 2  # [B, K, D]
        return alpha, sigma, mean_k, var_k

    def _component_log_joint(self, z, mean_k, var_k):
        """log π_k + log N(z; α μ_k, diag(var_k)) for every component: [B, K]."""
        diff = z[:, None, :] - mean_k
        log_norm = -0.5 * (diff**2 / var_k + torch.log(2 * math.pi * var_k)).sum(-1)
        return torch.log(self.weights.to(device=z.device, dtype=z.dtype))[None] + log_norm

    def class_log_prob(self, z: torch.Tensor, logsnr: torch.Tensor | float) -> torch.Tensor:
        """Exact Bayes classifier log p(c | z_λ) for every class: [B, K]."""
        _, _, mean_k, var_k = self._params(z, logsnr)
        return torch.log_softmax(self._component_log_joint(z, mean_k, var_k), dim=-1)

    def log_prob_fn(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(labels | z_λ): [B], the form ``cfgdiff.guidance.classifier_guidance`` takes."""
        return self.class_log_prob(z, logsnr).gather(1, labels.long()[:, None])[:, 0]

    def log_marginal(
        self, z: torch.Tensor, logsnr: torch.Tensor | float, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(z_λ | c) for labels < K, log p(z_λ) for label K (or labels=None): [B]."""
        _, _, mean_k, var_k = self._params(z, logsnr)
        log_joint = self._component_log_joint(z, mean_k, var_k)  # [B, K]
        log_uncond = torch.logsumexp(log_joint, dim=-1)
        if labels is None:
            return log_uncond
        labels = labels.long()
        cond = labels < self.num_classes
        log_cond = (log_joint - torch.log(self.weights.to(z))[None]).gather(
            1, labels.clamp(max=self.num_classes - 1)[:, None]
        )[:, 0]
        return torch.where(cond, log_cond, log_uncond)

    def score(self, z: torch.Tensor, logsnr: torch.Tensor | float, labels: torch.Tensor) -> torch.Tensor:
        """∇_z log p(z_λ | c) (labels < K) or ∇_z log p(z_λ) (labels == K): [B, D].

        Component score -(z - α μ_k)/var_k, mixed by the posterior responsibilities r_k(z) for label K.
        """
        _, _, mean_k, var_k = self._params(z, logsnr)
        comp_score = -(z[:, None, :] - mean_k) / var_k  # [B, K, D]
        resp = torch.softmax(self._component_log_joint(z, mean_k, var_k), dim=-1)  # [B, K]
        uncond = (resp[:, :, None] * comp_score).sum(1)
        labels = labels.long()
        cond = comp_score.gather(1, labels.clamp(max=self.num_classes - 1)[:, None, None].expand(-1, 1, self.dim))
        return torch.where((labels < self.num_classes)[:, None], cond[:, 0], uncond)

    def eps(self, z: torch.Tensor, logsnr: torch.Tensor | float, labels: torch.Tensor) -> torch.Tensor:
        """Exact ε*(z, λ, c) = -σ_λ ∇_z log p(z_λ | c); label K gives the unconditional ε*(z, λ)."""
        _, sigma, _, _ = self._params(z, logsnr)
        return -sigma * self.score(z, logsnr, labels)

    __call__ = eps

    def class_log_prob_grad(self, z: torch.Tensor, logsnr: torch.Tensor | float, labels: torch.Tensor) -> torch.Tensor:
        """∇_z log p(c | z_λ) = ∇ log p(z_λ | c) - ∇ log p(z_λ), exact: [B, D]."""
        null = torch.full_like(labels, self.num_classes)
        return self.score(z, logsnr, labels) - self.score(z, logsnr, null)

    # -- data ---------------------------------------------------------------------------------------------

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact data x ~ N(μ_c, diag(s_c²)) for each label c: [B, D] float64 (on the generator's device)."""
        labels = torch.as_tensor(labels).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}]")
        device = generator.device if generator is not None else labels.device
        noise = torch.randn(labels.shape[0], self.dim, generator=generator, dtype=torch.float64, device=device)
        labels = labels.to(device)
        return self.means.to(device)[labels] + self.stds.to(device)[labels] * noise

    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n labels drawn from the class weights π."""
        device = generator.device if generator is not None else "cpu"
        return torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)

    def guided_log_density(self, x: torch.Tensor, labels: torch.Tensor, w: float) -> torch.Tensor:
        """Unnormalised log of the guided target at the data end, log p(x | c) + w log p(c | x): [B].

        Normalise numerically (e.g. on a grid) to draw the paper's Figure 2 densities.
        """
        logsnr_data = torch.full((x.shape[0],), 40.0, dtype=x.dtype, device=x.device)  # σ² ≈ 4e-18: x itself
        log_cond = self.log_marginal(x, logsnr_data, labels)
        log_post = self.log_prob_fn(x, logsnr_data, labels)
        return log_cond + w * log_post
