"""Loss callables: what the ``Trainer`` minimises, one function of (network, batch, generator) per kind.

The contract (``LossFn``)::

    loss = loss_fn(model, batch, generator)

* ``model``: the network being trained, as the Trainer runs it (possibly wrapped in DistributedDataParallel
  and/or ``torch.compile``; call it, do not read attributes off it);
* ``batch``: a ``Batch`` of this process's micro-batch, ``batch.x`` float32 on the training device
  ([b, C, H, W] images in [-1, 1], already flipped, or [b, D] vectors) and ``batch.labels`` int64 [b] in
  [0, K);
* ``generator``: this process's ``torch.Generator`` on the training device; draw EVERY random number of the
  loss from it (label dropout, λ, ε, ...), so that ``--resume`` is bit-exact and ranks draw independently;
* returns the mean loss over the micro-batch, a scalar tensor (the Trainer averages micro-batches and
  processes, so the gradient is that of the mean over the global batch).

The Trainer calls it under autocast when asked; anything that must not be differentiated (a teacher network
in distillation, a fixed feature extractor) lives inside the callable, under ``torch.no_grad()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from cfgdiff.core.diffusion import diffuse, loss_eps_mse
from cfgdiff.core.schedule import LOGSNR_MAX, LOGSNR_MIN, sample_logsnr


@dataclass(frozen=True)
class Batch:
    """One micro-batch on the training device: x float32 [b, ...] (model inputs), labels int64 [b]."""

    x: torch.Tensor
    labels: torch.Tensor


class LossFn(Protocol):
    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> torch.Tensor: ...


def drop_labels(labels: torch.Tensor, p_uncond: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label K with probability p_uncond (Algorithm 1)."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


@dataclass(frozen=True)
class DiffusionLoss:
    """Algorithm 1 of Ho & Salimans (2022), ε-prediction with label dropout, on one batch (x, c):

        c ← ∅ (= K) with probability p_uncond      # one network learns ε(z, c) and ε(z) = ε(z, ∅)
        λ ~ p(λ)  (cosine map of u ~ U(0, 1), or uniform on [λ_min, λ_max])
        ε ~ N(0, I),  z_λ = α_λ x + σ_λ ε
        loss = mean ||ε_θ(z_λ, λ, c) - ε||²

    Draws in this order from the generator: the dropout coin [b], u [b], ε [b, ...].
    """

    num_classes: int  # K; the null label
    p_uncond: float = 0.1
    logsnr_schedule: str = "cosine"
    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        x = batch.x
        labels = drop_labels(batch.labels, self.p_uncond, self.num_classes, generator)
        logsnr = sample_logsnr(x.shape[0], self.logsnr_schedule, logsnr_min=self.logsnr_min,
                               logsnr_max=self.logsnr_max, generator=generator, device=x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        z = diffuse(x=x, eps=eps, logsnr=logsnr)
        return loss_eps_mse(model(z, logsnr, labels).float(), eps)


def beta_of_w(w: torch.Tensor | float) -> torch.Tensor | float:
    """GFT's temperature of the paper's guidance weight w: β = 1/(1 + w) (w = 0 ↔ β = 1, the conditional model)."""
    return 1.0 / (1.0 + w)


def w_of_beta(beta: torch.Tensor | float) -> torch.Tensor | float:
    """The guidance weight of GFT's temperature β ∈ (0, 1]: w = 1/β - 1 (inverse of ``beta_of_w``)."""
    return 1.0 / beta - 1.0


def gft_conditional(*, eps_sampling: torch.Tensor, eps_uncond: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """GFT's implicit conditional model (Chen et al. 2025): ε_c = β ε_s(z, c, β) + (1 - β) ε_u(z).

    ``beta`` [b] broadcasts over the trailing dimensions. Solved for ε_s with β = 1/(1 + w), ε_s = (1 + w) ε_c - w ε_u:
    the sampling model that reproduces this ε_c is classifier-free guidance at w.
    """
    beta = beta.reshape(-1, *([1] * (eps_sampling.ndim - 1))).to(eps_sampling.dtype)
    return beta * eps_sampling + (1.0 - beta) * eps_uncond


@dataclass(frozen=True)
class GuidanceFreeLoss:
    """Guidance-free training, GFT (Chen et al. 2025, "Visual Generation Without Guidance", arXiv 2501.15420),
    ε-prediction, on one batch (x, c). The network ε_θ(z, λ, c, w) is the SAMPLING model,
    conditioned on the paper's guidance weight w = 1/β - 1 (cfgdiff's one convention for w):

        c ← ∅ (= K) with probability p_uncond
        β ~ U(β_min, 1), β_min = 1/(1 + w_max);  β ← 1 where c = ∅;  w = 1/β - 1 ∈ [0, w_max]
        λ ~ p(λ),  ε ~ N(0, I),  z_λ = α_λ x + σ_λ ε
        ε_u = sg[ε_θ(z_λ, λ, ∅, 0)]                          # no gradient: one extra forward of b rows
        loss = mean ||β ε_θ(z_λ, λ, c, w) + (1 - β) ε_u - ε||²

    The implicit conditional model β ε_θ + (1 - β) ε_u is fitted by the usual maximum-likelihood ε-MSE, so at the
    optimum it is E[ε | z, c] = ε*(z, c) and ε_u = ε*(z): the network then equals (1 + w) ε*(z, c) - w ε*(z),
    classifier-free guidance at w, in one row per step. The dropped rows (β = 1) train ε_θ(·, ∅, 0) = ε*(z) exactly
    as Algorithm 1 does. The paper draws β ~ U(0, 1) (w up to ∞); cfgdiff bounds w by w_max, the range the network's
    w embedding covers (``cfgdiff.models.embeddings.GuidanceWeightEmbedding``).

    Draws in this order from the generator: the dropout coin [b], β's u [b], λ's u [b], ε [b, ...].
    """

    num_classes: int  # K; the null label
    p_uncond: float = 0.1
    w_max: float = 4.0
    logsnr_schedule: str = "cosine"
    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX

    def draw_beta(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """β [b] ~ U(1/(1 + w_max), 1), and 1 on the null rows."""
        beta_min = float(beta_of_w(self.w_max))
        u = torch.rand(labels.shape, generator=generator, device=labels.device)
        beta = beta_min + (1.0 - beta_min) * u
        return torch.where(labels == self.num_classes, torch.ones_like(beta), beta)

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        x = batch.x
        labels = drop_labels(batch.labels, self.p_uncond, self.num_classes, generator)
        beta = self.draw_beta(labels, generator)
        w = w_of_beta(beta)
        logsnr = sample_logsnr(x.shape[0], self.logsnr_schedule, logsnr_min=self.logsnr_min,
                               logsnr_max=self.logsnr_max, generator=generator, device=x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        z = diffuse(x=x, eps=eps, logsnr=logsnr)
        with torch.no_grad():
            eps_uncond = model(z, logsnr, torch.full_like(labels, self.num_classes), torch.zeros_like(w)).float()
        eps_cond = gft_conditional(eps_sampling=model(z, logsnr, labels, w).float(), eps_uncond=eps_uncond, beta=beta)
        return loss_eps_mse(eps_cond, eps)


@dataclass(frozen=True)
class NoisyClassifierLoss:
    """The noisy classifier of classifier guidance (Dhariwal & Nichol 2021) on the diffusion model's noise:

        λ ~ p(λ),  ε ~ N(0, I),  z_λ = α_λ x + σ_λ ε,   loss = mean -log p_φ(c | z_λ, λ)

    ``model(z, logsnr) -> logits [b, K]``. Draws u [b] then ε [b, ...] from the generator.
    """

    logsnr_schedule: str = "cosine"
    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX

    def __call__(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        x = batch.x
        logsnr = sample_logsnr(x.shape[0], self.logsnr_schedule, logsnr_min=self.logsnr_min,
                               logsnr_max=self.logsnr_max, generator=generator, device=x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return F.cross_entropy(model(diffuse(x=x, eps=eps, logsnr=logsnr), logsnr).float(), batch.labels)


def classifier_loss(model: nn.Module, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    """A plain classifier on clean inputs: loss = mean -log p_φ(c | x), ``model(x) -> logits [b, K]``.

    Draws nothing (the generator is part of the contract only).
    """
    return F.cross_entropy(model(batch.x).float(), batch.labels)


__all__ = ["Batch", "DiffusionLoss", "GuidanceFreeLoss", "LossFn", "NoisyClassifierLoss", "beta_of_w",
           "classifier_loss", "drop_labels", "gft_conditional", "w_of_beta"]
