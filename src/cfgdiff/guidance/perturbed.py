"""Guidance by a perturbed copy of the same network: perturbed-attention guidance (PAG; Ahn et al. 2024,
"Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance", arXiv 2403.17377, with CFG as in its
combined form) and skip-layer guidance (SLG: Stability AI's for SD3.5, diffusers' ``StableDiffusion3Pipeline``
``skip_guidance_layers``; the idea of Spatiotemporal Skip Guidance, Hyung et al. 2024, arXiv 2411.18664).

    ε̃ = ε_c + w (ε_c - ε_u) + s (ε_c - ε_p)

with w the paper's CFG weight (as for every method), s the perturbation scale and ε_p = ε(z, c) of the same
network with chosen layers perturbed (``cfgdiff.core.perturbation``): PAG replaces their self-attention map by
the identity, SLG skips those blocks. The perturbed rows go in the SAME call as the others, switched per row:
3B rows (conditional, null, perturbed) where both terms are on, 2B rows (conditional, perturbed) at w = 0 (no
null rows at all), B rows where the step is unguided (outside a guidance interval). s = 0 or no layers is plain
CFG exactly (the same calls and rows, the same arithmetic).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn, null_labels
from cfgdiff.core.perturbation import Perturbation, PerturbationError, check_layers, find_perturbable, perturbing
from cfgdiff.guidance.base import GuidanceWeight, GuidedEpsFn, check_finite, combine_cfg

RECOMMENDED_PAG_SCALE = 3.0  # pag_scale, the default of diffusers' PAG pipelines (Stable Diffusion, mid-block)
RECOMMENDED_SLG_SCALE = 2.8  # skip_layer_guidance_scale, the default of diffusers' StableDiffusion3Pipeline
METHOD_OF_KIND = {"attention-identity": "pag", "skip": "skip-layer"}  # the registry's name of each kind


class PerturbedGuidance(GuidedEpsFn):
    """ε̃ = ε_c + w (ε_c - ε_u) + s (ε_c - ε_p): CFG plus guidance away from the same network with ``layers``
    perturbed by ``kind`` (``attention-identity``: PAG; ``skip``: SLG), all rows in one batched call (module
    docstring). ``layers=None``: the network's default for ``kind``; ``()`` or s = 0: plain CFG."""

    zero_is_conditional = False  # w = 0 still takes the perturbation term

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight, *, kind: str, scale: float,
                 layers: Sequence[str] | None = None) -> None:
        super().__init__(eps_fn, w)
        self.kind = kind
        self.scale = check_finite("the perturbation scale", scale)
        if self.scale < 0:
            raise ValueError(f"the perturbation scale must be >= 0 (0 is plain CFG), got {self.scale:g}")
        network = find_perturbable(eps_fn)
        if network is None:
            raise PerturbationError(f"{_name(eps_fn)} cannot perturb its layers (it has no per-row perturbation "
                                    f"switch): {METHOD_OF_KIND.get(kind, kind)} needs a cfgdiff U-Net, or a diffusers "
                                    "UNet2DModel or DiT")
        self.layers = check_layers(network, kind, layers)
        self.perturbation = Perturbation(kind, self.layers)
        self.perturbed = self.scale != 0.0 and bool(self.layers)

    def params(self) -> dict[str, Any]:
        return {"kind": self.kind, "scale": self.scale, "layers": self.layers}

    def guided_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                   host_logsnr: float | None) -> torch.Tensor:
        w = self.step_weight(logsnr, host_logsnr)  # None: outside a guidance interval
        if w is None or (w == 0.0 and not self.perturbed):
            return call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)  # B rows
        batch = z.shape[0]
        blocks = [labels] + ([null_labels(labels, self.num_classes)] if w != 0.0 else [])
        if self.perturbed:
            blocks.append(labels)
        copies = len(blocks)
        rows = torch.zeros(copies * batch, dtype=torch.bool, device=z.device)
        if self.perturbed:
            rows[-batch:] = True  # the last B rows: the perturbed network
        with perturbing(rows, self.perturbation) if self.perturbed else nullcontext():
            eps = call_eps_fn(self.eps_fn, torch.cat([z] * copies), torch.cat([logsnr] * copies), torch.cat(blocks),
                              host_logsnr=host_logsnr)  # ONE call of copies x B rows
        eps_cond = eps[:batch]
        eps_guided = combine_cfg(eps_cond, eps[batch:2 * batch], w) if w != 0.0 else eps_cond
        if not self.perturbed:
            return eps_guided
        return eps_guided + self.scale * (eps_cond - eps[-batch:])


def _name(eps_fn: Any) -> str:
    while getattr(eps_fn, "eps_fn", None) is not None:
        eps_fn = eps_fn.eps_fn
    return type(eps_fn).__name__


def pag(eps_fn: EpsFn, w: GuidanceWeight, *, scale: float = RECOMMENDED_PAG_SCALE,
        layers: Sequence[str] | None = None) -> PerturbedGuidance:
    """Perturbed-attention guidance (Ahn et al. 2024) on top of CFG at weight w: ε_c + w (ε_c - ε_u)
    + s (ε_c - ε_p), ε_p with softmax(QKᵀ/√d) -> I in ``layers`` (default: the network's mid-block attention)."""
    return PerturbedGuidance(eps_fn, w, kind="attention-identity", scale=scale, layers=layers)


def skip_layer(eps_fn: EpsFn, w: GuidanceWeight, *, scale: float = RECOMMENDED_SLG_SCALE,
               layers: Sequence[str] | None = None) -> PerturbedGuidance:
    """Skip-layer guidance on top of CFG at weight w: ε_c + w (ε_c - ε_u) + s (ε_c - ε_p), ε_p with the blocks
    ``layers`` returning their input (default: the network's middle block)."""
    return PerturbedGuidance(eps_fn, w, kind="skip", scale=scale, layers=layers)
