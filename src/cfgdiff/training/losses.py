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


__all__ = ["Batch", "DiffusionLoss", "LossFn", "NoisyClassifierLoss", "classifier_loss", "drop_labels"]
