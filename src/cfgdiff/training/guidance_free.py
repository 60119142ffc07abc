"""A guidance-free trained run (``cfgdiff train --objective gft``) as eps_fns: ``GuidanceFreeModel.at(w)``.

The network ε_θ(z, λ, c, w) of a GFT run (``cfgdiff.training.losses.GuidanceFreeLoss``) is trained so that at the
optimum ε_θ(z, λ, c, w) = (1 + w) ε*(z, c) - w ε*(z): it is its own classifier-free guidance at w, in ONE row per
step. ``at(w)`` binds w and returns an ordinary eps_fn (a ``GuidanceFreeEpsFn``)

    eps = model.at(w)(z, logsnr, labels)          # one network call of B rows

which every sampler takes unchanged, and ``GuidedRun`` samples without a guidance wrapper (the pipeline's
``WConditionedEpsFn`` path: ``at`` and ``record``). A w outside the trained range [0, w_max] is refused
(``GuidanceFreeRangeError``, one line): the network never saw it and its w embedding is not built to extrapolate.

The run records ``objective = "gft"`` and ``guidance_free = {"w_range": [0, w_max], ...}`` in its checkpoint
metadata (``guidance_free_info``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

OBJECTIVE_KEY = "objective"  # checkpoint metadata: "cfg" (or absent) or "gft"
GUIDANCE_FREE_KEY = "guidance_free"  # checkpoint metadata of a GFT run: {"w_range": [0, w_max], "paper": ...}
GFT = "gft"
GFT_PAPER = "Chen et al. 2025, Visual Generation Without Guidance (arXiv 2501.15420)"


class GuidanceFreeRangeError(ValueError):
    """A w outside a guidance-free model's trained range [0, w_max] (one line)."""


def _take_network_description(target: object, network: nn.Module) -> None:
    """What the samplers and commands read of a network, set on ``target``: num_classes, data_shape, class_names
    and x_bound."""
    target.num_classes = int(network.num_classes)  # type: ignore[attr-defined]
    target.data_shape = tuple(network.data_shape)  # type: ignore[attr-defined]
    target.class_names = tuple(getattr(network, "class_names", ()))  # type: ignore[attr-defined]
    target.x_bound = float(getattr(network, "x_bound", 1.0))  # type: ignore[attr-defined]


class GuidanceFreeEpsFn(nn.Module):
    """The eps_fn of a GFT network at one fixed w: ``eps = ε_θ(z, λ, c, w)``, one call of B rows (already guided)."""

    def __init__(self, network: nn.Module, w: float) -> None:
        super().__init__()
        self.network = network
        self.w = float(w)
        _take_network_description(self, network)

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ε̃_w(z, λ, c): z [B, ...], logsnr [B], labels [B] -> [B, ...]."""
        return self.network(z, logsnr, labels, self.w)

    def extra_repr(self) -> str:
        return f"w={self.w:g}"


class GuidanceFreeModel:
    """A GFT-trained network with its trained range w ∈ [0, w_max]; ``at(w)`` is the guided eps_fn at w."""

    def __init__(self, network: nn.Module, w_max: float) -> None:
        if not getattr(network, "w_embedding", False):
            raise ValueError("a guidance-free model needs a network built with w_embedding=True")
        self.network = network
        self.w_max = float(w_max)
        _take_network_description(self, network)

    def check(self, w: float) -> float:
        """w itself, or ``GuidanceFreeRangeError`` when it lies outside [0, w_max]."""
        w = float(w)
        if not (math.isfinite(w) and 0.0 <= w <= self.w_max):
            raise GuidanceFreeRangeError(f"w = {w:g} lies outside this guidance-free model's training range "
                                         f"[0, {self.w_max:g}] (train with --gft-w-max to widen it)")
        return w

    def at(self, w: float) -> GuidanceFreeEpsFn:
        """The eps_fn ε̃_w = ε_θ(·, ·, ·, w); ``GuidanceFreeRangeError`` for w outside [0, w_max]."""
        return GuidanceFreeEpsFn(self.network, self.check(w))

    def record(self) -> dict[str, Any]:
        """What a sweep's ``meta`` says about the model (``GuidedRun.record``)."""
        return {"objective": GFT, "w_range": [0.0, self.w_max]}

    def describe(self) -> str:
        """One line for reports."""
        return f"guidance-free trained (GFT, {GFT_PAPER}), w range [0, {self.w_max:g}]"


def guidance_free_info(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The ``guidance_free`` record of a checkpoint's metadata, or None for a run of another objective."""
    if meta.get(OBJECTIVE_KEY, "cfg") != GFT:
        return None
    return dict(meta.get(GUIDANCE_FREE_KEY) or {})


def load_guidance_free(run_dir: str | os.PathLike, *, ema: bool = True,
                       device: str | torch.device = "cpu") -> GuidanceFreeModel:
    """The ``GuidanceFreeModel`` of a GFT run (directory or checkpoint file), EMA weights by default."""
    from cfgdiff.runtime.checkpoint import read_metadata, resolve_checkpoint
    from cfgdiff.training.denoiser import load_model
    from cfgdiff.training.rundir import CHECKPOINT_FILE

    info = guidance_free_info(read_metadata(resolve_checkpoint(run_dir, CHECKPOINT_FILE)))
    if info is None:
        raise ValueError(f"{run_dir} is not a guidance-free trained run (its objective is not {GFT!r})")
    network = load_model(run_dir, ema=ema, device=device)
    return GuidanceFreeModel(network, float(info["w_range"][1]))


__all__ = ["GFT", "GFT_PAPER", "GUIDANCE_FREE_KEY", "OBJECTIVE_KEY", "GuidanceFreeEpsFn", "GuidanceFreeModel",
           "GuidanceFreeRangeError", "guidance_free_info", "load_guidance_free"]
