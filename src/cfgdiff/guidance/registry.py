"""The guidance methods by name: what ``--guidance NAME`` and ``run_sweep(guidance=NAME)`` build.

Each entry is a ``GuidanceMethod`` whose ``build(eps_fn, w, **params)`` returns an eps_fn. Adding a method means
adding its file to this package and one entry here; the samplers never change (a method that needs the sampler's
cooperation uses the contract's ``eps_pair`` / ``start_trajectory`` extensions, ``cfgdiff.guidance.base``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cfgdiff.core.contract import EpsFn
from cfgdiff.guidance.adaptive import RECOMMENDED_GAMMA, adaptive
from cfgdiff.guidance.apg import RECOMMENDED_BETA, RECOMMENDED_ETA, RECOMMENDED_R, apg
from cfgdiff.guidance.autoguidance import autoguidance
from cfgdiff.guidance.base import GuidanceWeight, GuideFn
from cfgdiff.guidance.cfg import cfg
from cfgdiff.guidance.cfg_zero import RECOMMENDED_ZERO_INIT_STEPS, cfg_zero_star
from cfgdiff.guidance.cfgpp import cfgpp
from cfgdiff.guidance.classifier import LogProbFn, classifier_guidance
from cfgdiff.guidance.compose import compose
from cfgdiff.guidance.linear_ag import RECOMMENDED_FULL_FRACTION, linear_ag
from cfgdiff.guidance.perturbed import RECOMMENDED_PAG_SCALE, RECOMMENDED_SLG_SCALE, pag, skip_layer
from cfgdiff.guidance.rescale import RECOMMENDED_PHI, rescaled_cfg
from cfgdiff.guidance.thresholding import RECOMMENDED_PERCENTILE, dynamic_thresholding


@dataclass(frozen=True)
class GuidanceMethod:
    """A guidance method: how to build it and what to say about it (README table, report, CLI help)."""

    name: str  # the ``--guidance`` name
    build: Callable[..., EpsFn]  # build(eps_fn, w, **params) -> eps_fn
    title: str  # the method and its paper
    formula: str  # in the paper's w, ε / x̂ terms
    recommended: Mapping[str, Any] = field(default_factory=dict)  # the paper's recommended parameters
    neutral: Mapping[str, Any] | None = None  # parameters that make it plain CFG (None: there are none)
    networks: tuple[str, ...] = ()  # parameters that are further denoisers (eps_fns), counted as network rows
    classifiers: tuple[str, ...] = ()  # parameters that are classifiers (log_prob_fns), counted as classifier passes
    requires: tuple[str, ...] = ()  # parameters without a default (a guide network, a classifier)
    null_label: bool = True  # evaluates the null label ∅ (needs a model trained with label dropout)
    perturbation: str | None = None  # a kind of ``core.perturbation``: needs a network with the per-row switch
    cost: str = "one call of 2B rows per guided step; one call of B rows where unguided"
    w_range: str = "any finite w; w = 0 is the conditional model"

    def describe(self, params: Mapping[str, Any]) -> str:
        """``name (p = v, ...)`` with the numeric parameters (the ones a record can hold)."""
        shown = {k: v for k, v in {**self.recommended, **params}.items() if isinstance(v, int | float | bool)}
        inner = ", ".join(f"{k} = {_fmt(v)}" for k, v in shown.items())
        return f"{self.name} ({inner})" if inner else self.name


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _classifier(eps_fn: EpsFn, w: GuidanceWeight, *, log_prob_fn: LogProbFn) -> EpsFn:
    return classifier_guidance(eps_fn, log_prob_fn, w)


GUIDANCE_METHODS: dict[str, GuidanceMethod] = {m.name: m for m in (
    GuidanceMethod(
        "cfg", cfg, "Classifier-free guidance (Ho & Salimans 2022)", "ε̃ = ε_c + w (ε_c - ε_u)",
        neutral={}),
    GuidanceMethod(
        "rescale", rescaled_cfg, "Rescaled CFG (Lin et al. 2023)",
        "x̂ = x̂_cfg (1 + φ (std(x̂_c)/std(x̂_cfg) - 1))",
        recommended={"phi": RECOMMENDED_PHI}, neutral={"phi": 0.0}),
    GuidanceMethod(
        "thresholding", dynamic_thresholding, "Dynamic thresholding (Saharia et al. 2022, Imagen)",
        "s = max(b, quantile_p |x̂_cfg|), x̂ = clip(x̂_cfg, -s, s) b/s",
        recommended={"percentile": RECOMMENDED_PERCENTILE}, neutral={"percentile": 100.0},
        cost="one call of 2B rows per guided step; B rows at w = 0 (x̂_c is still thresholded)",
        w_range="any finite w; w = 0 is the conditional model with its x̂ thresholded"),
    GuidanceMethod(
        "apg", apg, "Adaptive projected guidance (Sadat et al. 2024)",
        "Δ = x̂_c - x̂_u, m = Δ + β m, clamp ‖m‖ <= r, x̂ = x̂_c + w (m_⊥ + η m_∥) (∥, ⊥ to x̂_c)",
        recommended={"eta": RECOMMENDED_ETA, "r": RECOMMENDED_R, "beta": RECOMMENDED_BETA},
        neutral={"eta": 1.0, "r": math.inf, "beta": 0.0}),
    GuidanceMethod(
        "cfgpp", cfgpp, "CFG++ (Chung et al. 2024)",
        "x̂ from ε_u + (w + 1)(ε_c - ε_u), re-noise with ε_u: z' = α' x̂ + σ' ε_u (DDIM)",
        cost="one call of 2B rows per step (also at w = 0); B rows outside a guidance interval",
        w_range="w in [-1, 0] (the paper's λ = w + 1 in [0, 1]); w = -1 is the unconditional model"),
    GuidanceMethod(
        "cfg-zero", cfg_zero_star, "CFG-Zero* (Fan et al. 2025)",
        "s* = <v_c, v_u>/‖v_u‖², v = v_c + w (v_c - s* v_u) with v = ε - x̂; v = 0 on the first K grid points",
        recommended={"zero_init_steps": RECOMMENDED_ZERO_INIT_STEPS, "optimized_scale": True},
        neutral={"zero_init_steps": 0, "optimized_scale": False},
        cost="one call of 2B rows per guided step; none on the K zero-init steps; B rows where unguided"),
    GuidanceMethod(
        "auto", autoguidance, "Autoguidance (Karras et al. 2024)", "ε̃ = ε_1 + w (ε_1 - ε_0), ε_0 a weaker model",
        networks=("guide",), requires=("guide",), null_label=False,
        cost="one call of B rows of each network per guided step; the main model alone where unguided"),
    GuidanceMethod(
        "classifier", _classifier, "Classifier guidance (Dhariwal & Nichol 2021)", "ε̃ = ε_c - w σ ∇_z log p_φ(c|z)",
        requires=("log_prob_fn",), classifiers=("log_prob_fn",), null_label=False,
        cost="one call of B rows per step plus one classifier forward and backward pass where guided"),
    GuidanceMethod(
        "pag", pag, "Perturbed-attention guidance (Ahn et al. 2024)",
        "ε̃ = ε_c + w (ε_c - ε_u) + s (ε_c - ε_p), ε_p: softmax(QKᵀ/√d) -> I in the chosen layers",
        recommended={"scale": RECOMMENDED_PAG_SCALE}, neutral={"scale": 0.0}, perturbation="attention-identity",
        cost="one call of 3B rows per guided step (conditional, null, perturbed); 2B rows at w = 0 (no null rows)",
        w_range="any finite w (the CFG term; w = 0 is PAG alone); the scale s >= 0"),
    GuidanceMethod(
        "skip-layer", skip_layer, "Skip-layer guidance (SD3.5; Hyung et al. 2024)",
        "ε̃ = ε_c + w (ε_c - ε_u) + s (ε_c - ε_p), ε_p: the chosen blocks return their input",
        recommended={"scale": RECOMMENDED_SLG_SCALE}, neutral={"scale": 0.0}, perturbation="skip",
        cost="one call of 3B rows per guided step (conditional, null, perturbed); 2B rows at w = 0 (no null rows)",
        w_range="any finite w (the CFG term; w = 0 is SLG alone); the scale s >= 0"),
    GuidanceMethod(
        "compose", compose, "Composed and negative conditions (Liu et al. 2022)",
        "ε̃ = ε_u + (1 + w) Σ_i w_i (ε(z, c_i) - ε_u), the conditions c_i and weights w_i fixed for every sample",
        requires=("terms",),
        cost="one call of (k + 1) B rows per step (k conditions and ∅), also outside a guidance interval",
        w_range="any finite w, the scale 1 + w of every w_i; w = 0 is the composition as written, w = -1 the "
                "unconditional model"),
    GuidanceMethod(
        "adaptive", adaptive, "Adaptive guidance (Castillo et al. 2023)",
        "ε̃ = ε_c + w (ε_c - ε_u) until cos(ε_c, ε̃) > γ, then ε_c alone for the rest of that sample",
        recommended={"gamma": RECOMMENDED_GAMMA}, neutral={"gamma": 1.0},
        cost="one call of B + B_u rows per guided step, B_u the samples not yet switched; B rows where unguided"),
    GuidanceMethod(
        "linear-ag", linear_ag, "LinearAG (after Castillo et al. 2023)",
        "ε̃ = ε_c + w (ε_c - ε̂_u), ε̂_u = ε_c - (ε_c,s - ε_u,s) after the first ⌈f S⌉ steps (s: the last full step)",
        recommended={"full_fraction": RECOMMENDED_FULL_FRACTION}, neutral={"full_fraction": 1.0},
        cost="one call of 2B rows on each of the first ⌈f S⌉ steps, then B rows per step"),
)}


def uses_null_label(name: str) -> bool:
    """Whether the method ``name`` evaluates the null label (False for autoguidance and classifier guidance, and for
    a name that is not registered: a guide of the caller's own is taken to be classifier-free)."""
    method = GUIDANCE_METHODS.get(name)
    return True if method is None else method.null_label


def guidance_method(name: str) -> GuidanceMethod:
    """The registered method called ``name`` (ValueError listing the names otherwise)."""
    if name not in GUIDANCE_METHODS:
        raise ValueError(f"unknown guidance {name!r}; choose from {', '.join(GUIDANCE_METHODS)}")
    return GUIDANCE_METHODS[name]


def make_guide(method: str, **params: Any) -> GuideFn:
    """``guide(eps_fn, w) -> eps_fn`` for the registered ``method`` with ``params`` (its keyword arguments; the
    rest keep the method's recommended defaults). Unknown or missing parameters raise ValueError here; values are
    checked when the guide is first built (``guide(model, w)``)."""
    spec = guidance_method(method)
    signature = inspect.signature(spec.build)
    try:
        signature.bind(None, 0.0, **params)
    except TypeError as err:
        raise ValueError(f"guidance {method}: {err}") from None

    def guide(eps_fn: EpsFn, w: GuidanceWeight) -> EpsFn:
        return spec.build(eps_fn, w, **params)

    guide.method = method  # type: ignore[attr-defined]
    guide.params = dict(params)  # type: ignore[attr-defined]
    return guide
