"""Composed conditions and negative guidance (Liu et al. 2022, "Compositional Visual Generation with Composable
Diffusion Models", arXiv 2206.01714, Eq. 10; a negative weight is a negative prompt)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn, call_eps_fn, null_labels, step_logsnr
from cfgdiff.guidance.base import GuidanceWeight, check_weight, guided_at, read_logsnr_if, weight_at

Terms = Sequence[tuple[int, float]]  # (class c_i, weight w_i), weights of either sign


def check_terms(terms: Terms, num_classes: int) -> tuple[tuple[int, float], ...]:
    """The terms as ((c_i, w_i), ...) with integer classes in [0, K) and finite weights (ValueError otherwise)."""
    out = []
    for term in terms:
        try:
            c, weight = term
        except (TypeError, ValueError):
            raise ValueError(f"compose terms are (class, weight) pairs, got {term!r}") from None
        if isinstance(c, bool) or int(c) != c:
            raise ValueError(f"compose: a class is an integer index, got {c!r}")
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"compose: class {c} outside [0, {num_classes}) for this model")
        if not math.isfinite(float(weight)):
            raise ValueError(f"compose: the weight of class {c} must be finite, got {weight}")
        out.append((int(c), float(weight)))
    if not out:
        raise ValueError("compose needs at least one (class, weight) term")
    return tuple(out)


class ComposedGuidance:
    """ε̃(z) = ε_u + (1 + w) Σ_i w_i (ε(z, c_i) - ε_u), ε_u = ε(z, ∅) (Liu et al. 2022, Eq. 10).

    With exact scores this is -σ ∇_z log [p(z) Π_i (p(z | c_i)/p(z))^{s w_i}], s = 1 + w: the product of the
    conditions (a negative w_i divides by one, a negative prompt). The conditions are fixed by ``terms``, the same
    for every sample: the labels a sampler passes give only the number of rows and are otherwise ignored.

    w is the paper's weight, applied as the scale s = 1 + w of every w_i: w = 0 is the composition as written,
    w = -1 the unconditional model, and one term (c, 1) at w is classifier-free guidance at w on class c
    (ε_u + (1 + w)(ε_c - ε_u)). Where a guidance interval switches guidance off, the step is the composition as
    written (s = 1), as CFG's unguided step is its conditional model. Cost: ONE call of (k + 1) B rows per step
    (k conditions, then ∅), or B rows where that is all the step needs (w = -1: ε_u alone; one term of weight 1
    at s = 1: ε_c alone).
    """

    def __init__(self, eps_fn: EpsFn, w: GuidanceWeight, *, terms: Terms) -> None:
        self.eps_fn = eps_fn
        self.w = check_weight(w)
        self.num_classes = eps_fn.num_classes
        self.terms = check_terms(terms, self.num_classes)

    def params(self) -> dict[str, Any]:
        return {"terms": self.terms}

    def scale_at(self, logsnr: torch.Tensor, host_logsnr: float | None) -> float:
        """s = 1 + w(λ), or 1 where a guidance interval is off."""
        if not callable(self.w):
            return 1.0 + self.w
        lam = step_logsnr(logsnr, host_logsnr)
        if not guided_at(self.w, lam):
            return 1.0
        w = weight_at(self.w, lam)
        if not math.isfinite(w):
            raise ValueError(f"the weight schedule gave w = {w} at logsnr {lam}")
        return 1.0 + w

    def composed_eps(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor,
                     host_logsnr: float | None) -> torch.Tensor:
        scale = self.scale_at(logsnr, host_logsnr)
        batch, k = z.shape[0], len(self.terms)
        null = null_labels(labels, self.num_classes)
        if scale == 0.0:  # the unconditional model: B rows
            return call_eps_fn(self.eps_fn, z, logsnr, null, host_logsnr=host_logsnr)
        if scale == 1.0 and k == 1 and self.terms[0][1] == 1.0:  # ε_c itself: B rows
            return call_eps_fn(self.eps_fn, z, logsnr, torch.full_like(labels, self.terms[0][0]),
                               host_logsnr=host_logsnr)
        rows = torch.cat([torch.full_like(labels, c) for c, _ in self.terms] + [null])  # [(k + 1) B]
        eps = call_eps_fn(self.eps_fn, torch.cat([z] * (k + 1)), torch.cat([logsnr] * (k + 1)), rows,
                          host_logsnr=host_logsnr)  # ONE call of (k + 1) B rows
        eps_uncond = eps[k * batch:]
        guided = eps_uncond.clone()
        for i, (_, weight) in enumerate(self.terms):
            guided = guided + (scale * weight) * (eps[i * batch:(i + 1) * batch] - eps_uncond)
        return guided

    def eps_at(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
               host_logsnr: float) -> torch.Tensor:
        return self.composed_eps(z, logsnr, labels, float(host_logsnr))

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.composed_eps(z, logsnr, labels, read_logsnr_if(callable(self.w), logsnr))

    def __repr__(self) -> str:
        return f"ComposedGuidance(w={self.w!r}, terms={self.terms!r})"


def compose(eps_fn: EpsFn, w: GuidanceWeight, *, terms: Terms) -> ComposedGuidance:
    """Composed (and negative) conditions, ε̃ = ε_u + (1 + w) Σ_i w_i (ε(z, c_i) - ε_u), for the ``terms``
    ((c_i, w_i), ...) (Liu et al. 2022); returns an eps_fn that ignores the labels' values."""
    return ComposedGuidance(eps_fn, w, terms=terms)


def parse_terms(text: str, class_names: Sequence[str] = (), *, num_classes: int | None = None) -> tuple[
        tuple[int, float], ...]:
    """``"3:+2,8:-1"`` -> ((3, 2.0), (8, -1.0)): comma-separated CLASS:WEIGHT, CLASS an index or one of
    ``class_names`` (case-insensitive), WEIGHT a signed number. ValueError (one line) naming the bad part."""
    aliases = {str(name).strip().lower(): i for i, name in reversed(list(enumerate(class_names)))}
    count = num_classes if num_classes is not None else len(class_names)
    terms = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            raise ValueError(f"compose takes CLASS:WEIGHT terms, comma-separated (e.g. 3:+2,8:-1), got {text!r}")
        name, sep, weight_text = part.rpartition(":")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"compose takes CLASS:WEIGHT terms, e.g. 3:+2,8:-1; got {part!r}")
        try:
            weight = float(weight_text)
        except ValueError:
            raise ValueError(f"compose: the weight of {part!r} must be a signed number, got {weight_text!r}") from None
        if not math.isfinite(weight):
            raise ValueError(f"compose: the weight of {part!r} must be finite, got {weight_text!r}")
        try:
            c = int(name)
        except ValueError:
            if name.lower() not in aliases:
                shown = ", ".join(repr(str(n)) for n in list(class_names)[:4])
                raise ValueError(f"compose: no class named {name!r} in this model (class names: {shown}"
                                 f"{', ...' if len(class_names) > 4 else ''})") from None
            c = aliases[name.lower()]
        if not 0 <= c < count:
            raise ValueError(f"compose: class {c} outside [0, {count}) for this model")
        terms.append((c, weight))
    return tuple(terms)


def positive_classes(terms: Terms) -> tuple[int, ...]:
    """The classes of the terms of positive weight, ascending, each once: what a composition asks for (a class of
    negative weight is steered away from, one of weight 0 does nothing)."""
    return tuple(sorted({int(c) for c, weight in terms if weight > 0}))


def describe_terms(terms: Terms) -> str:
    """((3, 2.0), (8, -1.0)) -> "3:+2,8:-1" (what ``parse_terms`` reads back)."""
    return ",".join(f"{c}:{w:+g}" for c, w in terms)
