"""The one denoiser contract every part of cfgdiff speaks.

An *eps_fn* is any callable ``eps = eps_fn(z, logsnr, labels)`` with

* ``z``: [B, ...] noisy latents, ``logsnr``: [B] log-SNR λ per row, ``labels``: [B] int64 in [0, K];
* an attribute ``num_classes`` = K, which is also the null label (the unconditional model ε(z) = ε(z, ∅));
* output ε̂ with the shape and dtype of ``z``.

Trained networks, ``cfgdiff.core.toy.GaussianMixture`` and every guidance wrapper are eps_fns. The counter of
network evaluations is ``cfgdiff.guidance.counting.CountingEpsFn``.

Optional extensions, each a ``runtime_checkable`` Protocol that the samplers test with ``isinstance`` (an eps_fn
without them is sampled as a plain one, bit for bit):

* ``HostLogsnrEpsFn.eps_at(z, logsnr, labels, *, host_logsnr)``: the same ε̂, told the step's λ also as a Python
  float. A sampler passes one λ for every row and knows it on the host, so an eps_fn that needs λ as a number (a
  weight schedule, a guidance interval, a zero-init threshold) reads no tensor and, on a GPU, does not synchronise.
  Guidance wrappers implement it and forward ``host_logsnr`` to the eps_fns they wrap (``call_eps_fn``); called
  as ``eps_fn(z, logsnr, labels)`` they read λ from the tensor once, where they need it.
* ``PairedEpsFn.eps_pair(z, logsnr, labels) -> EpsPair(eps_x, eps_renoise)``: step towards
  x̂ = (z - σ ε̂_x)/α and re-noise with ε̂_renoise (CFG++); ``HostLogsnrPairedEpsFn.eps_pair_at`` is the same with
  ``host_logsnr``. How a sampler uses the pair is in ``cfgdiff.guidance.base``.
* ``TrajectoryEpsFn.start_trajectory(logsnrs) -> eps_fn``: called once per sampler call with the λ grid; the
  returned eps_fn holds that batch of trajectories' state.

``call_eps_fn`` / ``call_eps_pair`` are the one place that picks the host-λ method when there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch


@runtime_checkable
class EpsFn(Protocol):
    """ε̂ = eps_fn(z, logsnr, labels); ``num_classes`` is K and the null label."""

    num_classes: int

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HostLogsnrEpsFn(EpsFn, Protocol):
    """An eps_fn that can also be told the step's λ (the same value for every row) as a Python float."""

    def eps_at(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
               host_logsnr: float) -> torch.Tensor: ...


class EpsPair(NamedTuple):
    """What ``eps_pair`` returns: x̂ = (z - σ ε̂_x)/α to step towards and ε̂_renoise to re-noise with."""

    eps_x: torch.Tensor
    eps_renoise: torch.Tensor


@runtime_checkable
class PairedEpsFn(EpsFn, Protocol):
    """An eps_fn that also names the x̂ to step towards and the ε̂ to re-noise with (``cfgdiff.guidance.base``)."""

    def eps_pair(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> EpsPair: ...


@runtime_checkable
class HostLogsnrPairedEpsFn(PairedEpsFn, Protocol):
    """A ``PairedEpsFn`` that can also be told the step's λ as a Python float."""

    def eps_pair_at(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
                    host_logsnr: float) -> EpsPair: ...


@runtime_checkable
class TrajectoryEpsFn(EpsFn, Protocol):
    """An eps_fn whose state lives in one batch of trajectories: the sampler calls ``start_trajectory`` first."""

    def start_trajectory(self, logsnrs: Sequence[float]) -> EpsFn: ...


def call_eps_fn(eps_fn: EpsFn, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
                host_logsnr: float | None) -> torch.Tensor:
    """ε̂ = eps_fn(z, logsnr, labels), through ``eps_at`` with the host λ where the eps_fn takes it and it is known."""
    if host_logsnr is not None and isinstance(eps_fn, HostLogsnrEpsFn):
        return eps_fn.eps_at(z, logsnr, labels, host_logsnr=host_logsnr)
    return eps_fn(z, logsnr, labels)


def call_eps_pair(eps_fn: PairedEpsFn, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
                  host_logsnr: float | None) -> EpsPair:
    """eps_fn.eps_pair(z, logsnr, labels), through ``eps_pair_at`` with the host λ where it is taken and known."""
    if host_logsnr is not None and isinstance(eps_fn, HostLogsnrPairedEpsFn):
        return eps_fn.eps_pair_at(z, logsnr, labels, host_logsnr=host_logsnr)
    return eps_fn.eps_pair(z, logsnr, labels)


def step_logsnr(logsnr: torch.Tensor, host_logsnr: float | None) -> float:
    """The step's λ as a Python float: ``host_logsnr`` where the caller passed it, else read from the tensor's first
    row (one device read; every row of a sampler's call has the same λ)."""
    return float(host_logsnr) if host_logsnr is not None else float(logsnr.reshape(-1)[0])


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
