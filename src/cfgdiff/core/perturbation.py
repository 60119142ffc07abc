"""The per-row perturbation switch: a weak guide made from the same network, in the same batched call.

Perturbed-attention guidance (PAG) and skip-layer guidance (SLG) compare the network with a perturbed copy of
itself. The perturbed rows travel in the SAME network call as the conditional (and null) rows; what differs is a
switch per row, set by the guidance method for the duration of one call, never a weight:

    with perturbing(rows, Perturbation("attention-identity", ("mid.0",))):
        eps = eps_fn(z, logsnr, labels)  # rows[i] True: row i through the perturbed network

The switch is a context variable rather than an argument, so that it passes through every wrapper of the
contract (``CountingEpsFn``, ``PreparedEpsFn``, autocast) unchanged and the call stays ``eps_fn(z, logsnr,
labels)``: one counted call. A network that honours it is a ``PerturbableEpsFn`` (it lists its layers per kind);
its forward reads ``active_perturbation(batch)`` once per call. The kinds:

* ``attention-identity`` (PAG, Ahn et al. 2024, Eq. 9): in the named self-attention layers the attention map
  softmax(Q Kᵀ/√d) is replaced by the identity, so the attention's output is its value projection V (then the
  output projection and the residual, as usual);
* ``skip`` (SLG): the named blocks return their input (a residual / transformer block skipped).

Rows not switched on are computed exactly as without a perturbation (each row is computed alone: GroupNorm,
attention within an image), so a perturbation never changes the other rows of its call.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

PERTURBATION_KINDS = ("attention-identity", "skip")


class Perturbation(NamedTuple):
    """What the switched-on rows go through: ``kind`` (one of ``PERTURBATION_KINDS``) in the ``layers`` named."""

    kind: str
    layers: tuple[str, ...]


class ActivePerturbation(NamedTuple):
    """The switch during one call: ``rows`` [B] bool (True: perturbed) and the ``perturbation``."""

    rows: torch.Tensor
    perturbation: Perturbation

    def rows_for(self, layer: str, kind: str) -> torch.Tensor | None:
        """The rows to perturb in ``layer`` with ``kind``, or None where this layer is left alone."""
        if self.perturbation.kind != kind or layer not in self.perturbation.layers:
            return None
        return self.rows


_ACTIVE: contextvars.ContextVar[ActivePerturbation | None] = contextvars.ContextVar("cfgdiff_perturbation",
                                                                                   default=None)


@runtime_checkable
class PerturbableEpsFn(Protocol):
    """A network that honours the per-row switch: ``perturbable_layers(kind)`` names the layers it can perturb with
    ``kind`` (in its own order), ``default_perturbed_layers(kind)`` the ones used when none are named."""

    num_classes: int

    def perturbable_layers(self, kind: str) -> tuple[str, ...]: ...

    def default_perturbed_layers(self, kind: str) -> tuple[str, ...]: ...


class PerturbationError(ValueError):
    """A perturbation asked of a network that cannot do it (no support, an unknown layer): one line."""


@contextmanager
def perturbing(rows: torch.Tensor, perturbation: Perturbation) -> Iterator[None]:
    """Switch ``perturbation`` on for ``rows`` ([B] bool) of the network calls made inside the block."""
    if perturbation.kind not in PERTURBATION_KINDS:
        raise ValueError(f"unknown perturbation kind {perturbation.kind!r}; choose from "
                         f"{', '.join(PERTURBATION_KINDS)}")
    token = _ACTIVE.set(ActivePerturbation(rows.to(torch.bool).reshape(-1), perturbation))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_perturbation(batch: int) -> ActivePerturbation | None:
    """The switch of the call under way (None: no perturbation, or no row switched on), for a network whose call
    has ``batch`` rows; ValueError if the switch was set for another number of rows. A network reads it once at the
    top of its forward and passes the rows down to its layers."""
    active = _ACTIVE.get()
    if active is None:
        return None
    if active.rows.numel() != batch:
        raise ValueError(f"the perturbation switch holds {active.rows.numel()} rows, the network call {batch}")
    if not bool(active.rows.any()):
        return None
    return active


def find_perturbable(eps_fn: Any) -> PerturbableEpsFn | None:
    """The ``PerturbableEpsFn`` that ``eps_fn`` is or wraps (through ``.eps_fn``, as the counters and the prepared
    networks hold it), or None."""
    while eps_fn is not None:
        if isinstance(eps_fn, PerturbableEpsFn):
            return eps_fn
        eps_fn = getattr(eps_fn, "eps_fn", None)
    return None


def check_layers(network: PerturbableEpsFn, kind: str, layers: Sequence[str] | None) -> tuple[str, ...]:
    """``layers`` (or the network's default for ``kind`` when None) checked against what it can perturb; one-line
    ``PerturbationError`` naming the available layers otherwise."""
    available = tuple(network.perturbable_layers(kind))
    if not available:
        raise PerturbationError(f"{type(network).__name__} has no layers to perturb with {kind}")
    chosen = tuple(network.default_perturbed_layers(kind)) if layers is None else tuple(str(x) for x in layers)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise PerturbationError(f"no layer {unknown[0]!r} to perturb with {kind}; available: {', '.join(available)}")
    return chosen


def split_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of the unperturbed rows, indices of the perturbed rows) of a [B] bool switch."""
    return (~rows).nonzero().reshape(-1), rows.nonzero().reshape(-1)


def merge_rows(plain: torch.Tensor, perturbed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """One [B, ...] tensor from the unperturbed rows' outputs and the perturbed rows' outputs, in row order."""
    keep, switched = split_rows(rows)
    out = plain.new_empty((rows.numel(), *plain.shape[1:]))
    out[keep] = plain
    out[switched] = perturbed.to(plain.dtype)
    return out
