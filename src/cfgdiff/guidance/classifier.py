"""Classifier guidance (Dhariwal & Nichol 2021) and the implicit classifier of classifier-free guidance."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn, step_logsnr
from cfgdiff.guidance.base import (
    GuidanceWeight,
    alpha_sigma_rows,
    check_weight,
    eval_cond_uncond,
    guided_at,
    read_logsnr_if,
    weight_at,
)

LogProbFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _grad_log_prob(log_prob_fn: LogProbFn, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """∇_z log p(labels | z_λ), computed with autograd even under ``torch.inference_mode``."""
    with torch.inference_mode(False), torch.enable_grad():
        z_in = z.detach().clone().requires_grad_(True)
        log_prob = log_prob_fn(z_in, logsnr.clone(), labels.clone())  # [B]
        (grad,) = torch.autograd.grad(log_prob.sum(), z_in)
    return grad.detach()


class ClassifierGuidance:
    """ε̃(z, c) = ε(z, c) - w σ_λ ∇_z log p_φ(c | z_λ) (Dhariwal & Nichol 2021), an eps_fn.

    The paper writes it for ε-prediction exactly so (their Algorithm 2, with s = w); it is the score
    ∇ log p(z|c) + w ∇ log p(c|z) in our ε = -σ ∇_z log p. ``log_prob_fn(z, logsnr, labels)`` returns
    log p_φ(labels | z_λ) of shape [B] and must be differentiable in z. Rows carrying the null label K get ε(z)
    unguided. Cost: one network call of B rows, plus one classifier forward and backward pass where w ≠ 0.
    """

    def __init__(self, eps_fn: EpsFn, log_prob_fn: LogProbFn, w: GuidanceWeight) -> None:
        self.eps_fn = eps_fn
        self.log_prob_fn = log_prob_fn
        self.w = check_weight(w)
        self.num_classes = eps_fn.num_classes

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        """ε̃ with the step's λ on the host (or None: read from the tensor where a schedule needs it)."""
        if callable(self.w):
            lam = step_logsnr(logsnr, host_logsnr)
            w = weight_at(self.w, lam) if guided_at(self.w, lam) else 0.0
        else:
            w = self.w
        eps = call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)
        if w == 0.0:
            return eps
        is_cond = labels < self.num_classes
        grad = _grad_log_prob(self.log_prob_fn, z, logsnr, labels.clamp(max=self.num_classes - 1))
        _, sigma = alpha_sigma_rows(logsnr, z)
        grad = grad * is_cond.reshape(-1, *([1] * (z.ndim - 1)))
        return eps - w * sigma * grad

    def eps_at(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
               host_logsnr: float) -> torch.Tensor:
        return self.guided_eps(z, logsnr, labels, float(host_logsnr))

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.guided_eps(z, logsnr, labels, read_logsnr_if(callable(self.w), logsnr))


def classifier_guidance(eps_fn: EpsFn, log_prob_fn: LogProbFn, w: GuidanceWeight) -> ClassifierGuidance:
    """Classifier guidance ε - w σ ∇_z log p(c | z_λ) with any differentiable classifier; returns an eps_fn."""
    return ClassifierGuidance(eps_fn, log_prob_fn, w)


def implicit_classifier_grad(
    eps_fn: EpsFn, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """∇_z log p^i(c | z_λ) = -(1/σ_λ) [ε(z, c) - ε(z)], the implicit classifier p^i(c|z) ∝ p(z|c)/p(z).

    One batched network call. With exact scores it equals the Bayes classifier's gradient.
    """
    eps_cond, eps_uncond = eval_cond_uncond(eps_fn, z, logsnr, labels)
    _, sigma = alpha_sigma_rows(logsnr, z)
    return -(eps_cond - eps_uncond) / sigma
