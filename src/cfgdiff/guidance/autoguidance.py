"""Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", arXiv 2406.02507,
Eq. 1 / §3): guide with a weaker model of the same conditioning instead of the unconditional one."""

from __future__ import annotations

from typing import Any

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn
from cfgdiff.guidance.base import GuidanceWeight, GuidedEpsFn


class Autoguidance(GuidedEpsFn):
    """ε̃ = ε_1(z, c) + w (ε_1(z, c) - ε_0(z, c)): the main model ε_1 extrapolated away from a weaker guide ε_0
    (a smaller network or an earlier checkpoint trained on the same data), both conditional on the same c.

    The paper writes D_w = w D_1 + (1 - w) D_0 with its guidance scale (EDM2's g), which is s = w + 1 here:
    D = D_1 + w (D_1 - D_0). The combination is affine with weights summing to 1, so it is the same in D (= our x̂)
    and in ε. Cost: one call of each network with B rows per guided step (the guide usually the cheaper one); w = 0,
    or a step outside a guidance interval, calls the main model alone. With the main model as its own guide it is
    the plain conditional model at every w. The null label is never used, so neither model needs one.
    """

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight, *, guide: EpsFn) -> None:
        super().__init__(eps_fn, w)
        if int(guide.num_classes) != int(eps_fn.num_classes):
            raise ValueError(f"the autoguidance guide has {guide.num_classes} classes, the main model "
                             f"{eps_fn.num_classes}")
        shapes = [_data_shape(m) for m in (guide, eps_fn)]
        if None not in shapes and shapes[0] != shapes[1]:
            raise ValueError(f"the autoguidance guide makes samples of shape {shapes[0]}, the main model {shapes[1]}")
        self.guide = guide

    def params(self) -> dict[str, Any]:
        return {"guide": type(self.guide).__name__}

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        w = self.step_weight(logsnr, host_logsnr)
        eps_main = call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)  # B rows of the main model
        if w is None:
            return eps_main
        eps_guide = call_eps_fn(self.guide, z, logsnr, labels, host_logsnr=host_logsnr)  # B rows of the guide
        return eps_main + w * (eps_main - eps_guide)


def _data_shape(eps_fn: Any) -> tuple[int, ...] | None:
    """``data_shape`` of an eps_fn or of one it wraps, or None."""
    while eps_fn is not None:
        if hasattr(eps_fn, "data_shape"):
            return tuple(eps_fn.data_shape)
        eps_fn = getattr(eps_fn, "eps_fn", None)
    return None


def autoguidance(eps_fn: EpsFn, w: GuidanceWeight, *, guide: EpsFn) -> Autoguidance:
    """Autoguidance (Karras et al. 2024): ε_1 + w (ε_1 - ε_0) with ``guide`` = ε_0, a weaker model of the same
    classes and data shape (EDM2's guidance g = w + 1); returns an eps_fn."""
    return Autoguidance(eps_fn, w, guide=guide)
