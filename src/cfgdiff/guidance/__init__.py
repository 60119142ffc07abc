"""Guidance as wrappers over the eps_fn contract: each takes an eps_fn (and a weight w) and returns an eps_fn.

One file per method; ``GUIDANCE_METHODS`` (registry.py) names them for the command line and the sweeps:

* ``cfg``: classifier-free guidance (Ho & Salimans 2022), ε̃ = ε_c + w (ε_c - ε_u)        cfg.py
* ``rescale``: rescaled CFG (Lin et al. 2023), φ                                           rescale.py
* ``thresholding``: dynamic thresholding of x̂ (Imagen), percentile p                       thresholding.py
* ``apg``: adaptive projected guidance (Sadat et al. 2024), η, r, β                          apg.py
* ``cfgpp``: CFG++ (Chung et al. 2024), re-noising with ε_u through ``eps_pair``             cfgpp.py
* ``cfg-zero``: CFG-Zero* (Fan et al. 2025), s* and zero-init of the first K steps           cfg_zero.py
* ``auto``: autoguidance with a weaker model (Karras et al. 2024)                            autoguidance.py
* ``compose``: composed and negative conditions (Liu et al. 2022), fixed (c_i, w_i)          compose.py
* ``adaptive``: adaptive guidance (Castillo et al. 2023), ε_c alone once cos(ε_c, ε̃) > γ      adaptive.py
* ``linear-ag``: ε_u estimated from past steps (LinearAG, Castillo et al. 2023), f           linear_ag.py
* ``classifier``: classifier guidance (Dhariwal & Nichol 2021) and the implicit classifier   classifier.py
* ``pag`` / ``skip-layer``: the same network perturbed per row, in the same call          perturbed.py
* weight schedules w(λ) and the guidance interval (Kynkäänniemi et al. 2024)                 schedules.py
* the weight convention, the batched call and the contract's extensions                      base.py

w is the paper's weight throughout (w = 0: the conditional model; s = w + 1 is diffusers' ``guidance_scale``).
"""

from cfgdiff.guidance.adaptive import AdaptiveGuidance, adaptive
from cfgdiff.guidance.apg import AdaptiveProjectedGuidance, apg
from cfgdiff.guidance.autoguidance import Autoguidance, autoguidance
from cfgdiff.guidance.base import (
    EpsPair,
    GuidanceWeight,
    GuidedEpsFn,
    GuideFn,
    HostLogsnrEpsFn,
    HostLogsnrPairedEpsFn,
    PairedEpsFn,
    TrajectoryEpsFn,
    WeightSchedule,
    check_weight,
    combine_cfg,
    eval_cond_uncond,
    guided_at,
    scale_from_w,
    w_from_scale,
    weight_at,
)
from cfgdiff.guidance.cfg import ClassifierFreeGuidance, cfg
from cfgdiff.guidance.cfg_zero import CFGZeroStar, cfg_zero_star
from cfgdiff.guidance.cfgpp import CFGPlusPlus, cfgpp
from cfgdiff.guidance.classifier import (
    ClassifierGuidance,
    LogProbFn,
    classifier_guidance,
    implicit_classifier_grad,
)
from cfgdiff.guidance.compose import ComposedGuidance, compose
from cfgdiff.guidance.linear_ag import LinearAG, linear_ag
from cfgdiff.guidance.perturbed import PerturbedGuidance, pag, skip_layer
from cfgdiff.guidance.registry import GUIDANCE_METHODS, GuidanceMethod, guidance_method, make_guide, uses_null_label
from cfgdiff.guidance.rescale import RescaledCFG, rescaled_cfg
from cfgdiff.guidance.schedules import (
    GuidanceInterval,
    guidance_interval,
    guidance_interval_sigma,
    guided_fraction,
    logsnr_from_sigma,
    sigma_from_logsnr,
)
from cfgdiff.guidance.thresholding import DynamicThresholding, dynamic_thresholding

__all__ = [
    "GUIDANCE_METHODS", "AdaptiveGuidance", "AdaptiveProjectedGuidance", "ComposedGuidance", "LinearAG",
    "adaptive", "compose", "linear_ag", "Autoguidance", "CFGPlusPlus", "CFGZeroStar",
    "ClassifierFreeGuidance", "ClassifierGuidance", "DynamicThresholding", "EpsPair", "GuidanceInterval",
    "GuidanceMethod", "GuidanceWeight", "GuidedEpsFn", "GuideFn", "HostLogsnrEpsFn", "HostLogsnrPairedEpsFn",
    "LogProbFn", "PairedEpsFn", "PerturbedGuidance", "RescaledCFG",
    "TrajectoryEpsFn", "WeightSchedule", "apg", "autoguidance", "cfg",
    "cfg_zero_star", "cfgpp", "check_weight", "classifier_guidance", "combine_cfg", "dynamic_thresholding",
    "eval_cond_uncond", "guidance_interval", "guidance_interval_sigma", "guidance_method", "guided_at",
    "guided_fraction", "implicit_classifier_grad", "logsnr_from_sigma", "make_guide", "pag", "rescaled_cfg",
    "scale_from_w", "sigma_from_logsnr", "skip_layer", "uses_null_label", "w_from_scale", "weight_at",
]
