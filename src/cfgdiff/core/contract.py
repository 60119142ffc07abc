"""The one denoiser contract every part of cfgdiff speaks.

An *eps_fn* is any callable ``eps = eps_fn(z, logsnr, labels)`` with

* ``z``: [B, ...] noisy latents, ``logsnr``: [B] log-SNR λ per row, ``labels``: [B] int64 in [0, K];
* an attribute ``num_classes`` = K, which is also the null label (the unconditional model ε(z) = ε(z, ∅));
* output ε̂ with the shape and dtype of ``z``.

Trained networks, ``cfgdiff.core.toy.GaussianMixture`` and every guidance wrapper are eps_fns. The counter of
network evaluations is ``cfgdiff.guidance.counting.CountingEpsFn``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class EpsFn(Protocol):
    """ε̂ = eps_fn(z, logsnr, labels); ``num_classes`` is K and the null label."""

    num_classes: int

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


def null_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A tensor like ``labels`` filled with the null label ∅ = K."""
    return torch.full_like(labels, num_classes)


def check_labels(labels: torch.Tensor, num_classes: int, *, allow_null: bool = True) -> None:
    """Raise ``ValueError`` unless labels are integers in [0, K) (or [0, K] with ``allow_null``)."""
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    upper = num_classes if allow_null else num_classes - 1
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > upper):
        raise ValueError(f"labels must lie in [0, {upper}] (num_classes = {num_classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
