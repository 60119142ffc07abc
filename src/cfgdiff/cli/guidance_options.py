"""Guidance options shared by ``cfgdiff sample`` and ``cfgdiff eval``: ``--guidance METHOD`` and its parameters.

``add_guidance_options(p)`` adds the flags; ``guidance_from_args(args, model, ws=..., ...)`` checks them (one-line
``UsageError``s, before anything is written), loads what a method needs (the guide run of autoguidance, the noisy
classifier of classifier guidance) and returns a ``GuidanceChoice``: the method and its parameters that the
commands' ``GuidedRun`` is built with (``cli.sampling_options.guided_run_from_args``).
Methods and their defaults come from
``cfgdiff.guidance.GUIDANCE_METHODS``; a method's flag given with another ``--guidance`` is refused.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfgdiff.cli.arguments import UsageError, checked, nonnegative_float, nonnegative_int, unit_float
from cfgdiff.guidance import GUIDANCE_METHODS, GuideFn, make_guide
from cfgdiff.guidance.compose import describe_terms, parse_terms

# flag -> (method, its parameter in the method's builder; None: a run directory loaded here)
METHOD_FLAGS: dict[str, tuple[str, str | None]] = {
    "--rescale-phi": ("rescale", "phi"),
    "--threshold-percentile": ("thresholding", "percentile"),
    "--apg-eta": ("apg", "eta"),
    "--apg-r": ("apg", "r"),
    "--apg-beta": ("apg", "beta"),
    "--cfg-zero-steps": ("cfg-zero", "zero_init_steps"),
    "--pag-scale": ("pag", "scale"),
    "--pag-layers": ("pag", "layers"),
    "--slg-scale": ("skip-layer", "scale"),
    "--skip-layers": ("skip-layer", "layers"),
    "--adaptive-gamma": ("adaptive", "gamma"),
    "--linear-ag-full": ("linear-ag", "full_fraction"),
    "--guide-run": ("auto", None),
    "--classifier": ("classifier", None),
}


def _method(text: str) -> str:
    if text not in GUIDANCE_METHODS:
        raise argparse.ArgumentTypeError(f"--guidance must be one of {', '.join(GUIDANCE_METHODS)}, got {text!r}")
    return text


def _norm_bound(text: str) -> float:
    """APG's r: a number > 0, or inf (no clamp)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--apg-r must be a number > 0 (or inf), got {text!r}") from None
    if not value > 0:  # refuses nan too
        raise argparse.ArgumentTypeError(f"--apg-r must be > 0 (or inf for no clamp), got {text}")
    return value


def _layer_list(flag: str):
    """Comma-separated layer names (``cfgdiff info RUN`` lists a run's); ``none`` for no layer (plain CFG)."""

    def parse(text: str) -> tuple[str, ...]:
        if text.strip().lower() == "none":
            return ()
        names = tuple(t.strip() for t in text.split(",") if t.strip())
        if not names:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated layer names (or none), got {text!r}")
        return names

    return parse


def _flag_text(value: Any) -> str:
    """A parameter's value as its flag takes it: a number, inf, or comma-separated names."""
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) or "none"
    return "inf" if isinstance(value, float) and math.isinf(value) else f"{value:g}"


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_guidance_options(p: argparse.ArgumentParser) -> None:
    """``--guidance`` and every method's parameters (defaults: the method's recommended values)."""
    g = p.add_argument_group("guidance method (w is the paper's weight for every method)")
    g.add_argument("--guidance", type=_method, default="cfg", metavar="|".join(GUIDANCE_METHODS),
                   help="cfg: (1+w) eps(z,c) - w eps(z) (default); rescale: Lin et al. 2023; thresholding: Imagen's "
                        "dynamic thresholding; apg: Sadat et al. 2024; cfgpp: CFG++ (w in [-1, 0], its lambda = w+1); "
                        "cfg-zero: CFG-Zero*; compose: composed and negative classes (--compose); adaptive: "
                        "Castillo et al. 2023, eps(z,c) alone once it agrees with the guided eps; linear-ag: eps(z) "
                        "estimated from earlier steps on the late ones; auto: autoguidance by a weaker run "
                        "(--guide-run); classifier: eps(z,c) - w sigma grad log p_phi(c|z) (--classifier); pag: CFG "
                        "+ s (eps_c - eps with identity attention) (--pag-scale, --pag-layers); skip-layer: CFG + s "
                        "(eps_c - eps with blocks skipped) (--slg-scale, --skip-layers)")
    g.add_argument("--rescale-phi", type=unit_float("--rescale-phi"), default=None,
                   help="rescale: mix phi of the std-rescaled x̂ (0 = plain CFG; default 0.7)")
    g.add_argument("--threshold-percentile", default=None,
                   type=checked("--threshold-percentile", float, lambda v: 0 < v <= 100, "lie in (0, 100]"),
                   help="thresholding: percentile p of |x̂| per sample (default 99.5)")
    g.add_argument("--apg-eta", type=checked("--apg-eta", float, lambda v: True, ""), default=None,
                   help="apg: weight of the guidance part parallel to x̂_c (1 = CFG; default 0)")
    g.add_argument("--apg-r", type=_norm_bound, default=None,
                   help="apg: bound r on the L2 norm of the guidance update in data space (inf = none; default 2.5)")
    g.add_argument("--apg-beta", type=checked("--apg-beta", float, lambda v: True, ""), default=None,
                   help="apg: momentum beta of the guidance update (0 = none; default -0.75)")
    g.add_argument("--cfg-zero-steps", type=nonnegative_int("--cfg-zero-steps"), default=None,
                   help="cfg-zero: zero-init of the first K sampler steps (default 1; 0 = none)")
    g.add_argument("--pag-scale", type=nonnegative_float("--pag-scale"), default=None, metavar="S",
                   help="pag: scale s of the perturbed-attention term s (eps_c - eps_perturbed) (0 = plain CFG; "
                        "default 3)")
    g.add_argument("--pag-layers", type=_layer_list("--pag-layers"), default=None, metavar="L1,L2",
                   help="pag: self-attention layers whose map becomes the identity (cfgdiff info RUN lists them; "
                        "default: the middle block's, not yet chosen by a measurement)")
    g.add_argument("--slg-scale", type=nonnegative_float("--slg-scale"), default=None, metavar="S",
                   help="skip-layer: scale s of the skip-layer term s (eps_c - eps_skipped) (0 = plain CFG; "
                        "default 2.8)")
    g.add_argument("--skip-layers", type=_layer_list("--skip-layers"), default=None, metavar="L1,L2",
                   help="skip-layer: blocks the perturbed rows skip (cfgdiff info RUN lists them; default: the "
                        "middle block, not yet chosen by a measurement)")
    g.add_argument("--adaptive-gamma", default=None,
                   type=checked("--adaptive-gamma", float, lambda v: 0 < v <= 1, "lie in (0, 1]"),
                   help="adaptive: switch a sample to eps(z,c) alone once cos(eps(z,c), guided eps) > gamma "
                        "(1 = never, plain CFG; default 0.99)")
    g.add_argument("--linear-ag-full", default=None,
                   type=checked("--linear-ag-full", float, lambda v: 0 < v <= 1, "lie in (0, 1]"),
                   help="linear-ag: share f of the steps computed in full before eps(z) is estimated as eps(z,c) "
                        "minus the last computed difference (1 = every step, plain CFG; default 0.5)")
    g.add_argument("--compose", default=None, metavar="CLASS:WEIGHT,...",
                   help="compose: eps(z) + (1+w) sum_i w_i (eps(z,c_i) - eps(z)) for every sample, e.g. "
                        "--compose 3:+2,8:-1 (CLASS an index or a class name; a negative weight steers away); "
                        "implies --guidance compose, and w scales "
                        "the weights by 1+w (w = 0: as written)")
    g.add_argument("--guide-run", type=Path, default=None, metavar="DIR",
                   help="auto: the weaker guide model, a run of the same data and classes (a smaller network or an "
                        "earlier checkpoint)")
    g.add_argument("--classifier", type=Path, default=None, metavar="DIR",
                   help="classifier: the noisy-classifier run (cfgdiff train-classifier)")


@dataclass
class GuidanceChoice:
    """The checked guidance of a command: the method, its parameters (loaded networks included) and what to record
    about it; ``guide(eps_fn, w) -> eps_fn`` builds the wrapper alone (the checks use it)."""

    method: str
    params: dict[str, Any]  # the builder's keyword arguments (a loaded guide network or classifier included)
    guide: GuideFn
    title: str  # e.g. "Rescaled CFG (Lin et al. 2023)"
    lines: list[str] = field(default_factory=list)  # Markdown lines for a report header
    argv: list[str] = field(default_factory=list)  # the guidance part of the command line

    def record(self) -> dict[str, Any]:
        """The method's numeric parameters in effect (recommended defaults included), for results.json; an infinite
        one as the string "inf" (JSON has no infinity)."""
        effective = {**GUIDANCE_METHODS[self.method].recommended, **self.params}
        record = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in effective.items()
                  if isinstance(v, int | float | bool)}
        if isinstance(effective.get("layers"), tuple | list):  # PAG / SLG: the perturbed layers, by name
            record["layers"] = ",".join(map(str, effective["layers"]))
        return record


def method_flag_params(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """{parameter: value} of ``method``'s numeric flags given on the command line (``METHOD_FLAGS``)."""
    params: dict[str, Any] = {}
    for flag, (owner, name) in METHOD_FLAGS.items():
        value = getattr(args, _dest(flag), None)
        if owner == method and name is not None and value is not None:
            params[name] = value
    return params


def _describe_guide(guide_run: Path, model: Any) -> str:
    """What the report says about autoguidance's weaker model: its size and training steps."""
    params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
    config = model.config() if callable(getattr(model, "config", None)) else {}
    size = ", ".join(f"{k} {config[k]}" for k in ("arch", "base_channels", "channel_mults", "hidden", "depth")
                     if k in config)
    steps = getattr(model, "train_step", 0)
    size = f"{size}, " if size else ""
    return f"guide model: {guide_run} ({size}{params / 1e6:.3f}M parameters, trained {steps} steps)"


def guidance_from_args(args: argparse.Namespace, model: Any, *, ws: Sequence[float], x_bound: float | None = 1.0,
                       device: str = "cpu", ema: bool = True) -> GuidanceChoice:
    """The guidance ``args`` ask for, checked against ``model`` at every weight in ``ws`` (one-line UsageErrors)."""
    method = args.guidance
    compose_text = getattr(args, "compose", None)
    if compose_text is not None:
        if method not in ("cfg", "compose"):
            raise UsageError(f"--compose is its own guidance (compose), not --guidance {method}")
        method = args.guidance = "compose"
    spec = GUIDANCE_METHODS[method]
    argv = ["--guidance", method]
    for flag, (owner, _) in METHOD_FLAGS.items():
        value = getattr(args, _dest(flag), None)
        if value is not None and owner != method:
            raise UsageError(f"{flag} goes with --guidance {owner}, not --guidance {method}")
    params = method_flag_params(args, method)
    flags = {name: flag for flag, (owner, name) in METHOD_FLAGS.items() if owner == method}
    for name, value in params.items():
        argv += [flags[name], _flag_text(value)]
    lines: list[str] = []
    if method == "compose":
        if compose_text is None:
            raise UsageError("--guidance compose needs --compose CLASS:WEIGHT,... (e.g. --compose 3:+2,8:-1)")
        try:
            params["terms"] = parse_terms(compose_text, tuple(getattr(model, "class_names", ()) or ()),
                                          num_classes=int(model.num_classes))
        except ValueError as err:
            raise UsageError(f"--{err}") from None
        argv = [f"--compose={describe_terms(params['terms'])}"]
        lines.append(f"- composed conditions: {describe_terms(params['terms'])} (class:weight)")
    if method == "thresholding":
        if x_bound is None:
            raise UsageError("--guidance thresholding needs a data range; this model has none (latents)")
        params["bound"] = float(x_bound)
    if method == "classifier":
        if args.classifier is None:
            raise UsageError("--guidance classifier needs --classifier RUN_DIR (train one with cfgdiff "
                             "train-classifier)")
        from cfgdiff.training.classifier import describe, load_classifier

        classifier = load_classifier(args.classifier, device=device)
        if tuple(classifier.data_shape) != tuple(model.data_shape):
            raise UsageError(f"the classifier takes {tuple(classifier.data_shape)}, the model makes "
                             f"{tuple(model.data_shape)}")
        params["log_prob_fn"] = classifier.log_prob_fn
        argv += ["--classifier", str(args.classifier)]
        lines.append(f"- classifier: {args.classifier} ({describe(classifier.train_meta)})")
    if method == "auto":
        if args.guide_run is None:
            raise UsageError("--guidance auto needs --guide-run DIR: a weaker run of the same data and classes "
                             "(a smaller network or an earlier checkpoint)")
        from cfgdiff.training import load_model

        guide_model = load_model(args.guide_run, ema=ema, device=device)
        if int(guide_model.num_classes) != int(model.num_classes):
            raise UsageError(f"--guide-run {args.guide_run} has {guide_model.num_classes} classes, the model "
                             f"{model.num_classes}")
        if tuple(guide_model.data_shape) != tuple(model.data_shape):
            raise UsageError(f"--guide-run {args.guide_run} makes samples of shape {tuple(guide_model.data_shape)}, "
                             f"the model {tuple(model.data_shape)}")
        params["guide"] = guide_model
        argv += ["--guide-run", str(args.guide_run)]
        lines.append(f"- {_describe_guide(args.guide_run, guide_model)}")
    guide = make_guide(method, **params)
    for w in ws:
        try:
            built = guide(model, float(w))  # builds the wrapper: checks the parameters and w, calls no network
        except ValueError as err:
            raise UsageError(f"--guidance {method}: {err}") from None
    if spec.perturbation is not None and ws:  # the layers in effect (the network's default when none were named)
        params["layers"] = tuple(built.layers)  # type: ignore[attr-defined]
        guide = make_guide(method, **params)
    shown = {k: v for k, v in params.items() if isinstance(v, int | float | bool) and k != "bound"}
    lines.insert(0, f"- guidance: {spec.describe(shown)}: {spec.title}; {spec.formula}")
    if spec.perturbation is not None and "layers" in params:
        lines.insert(1, f"- perturbed layers: {_flag_text(params['layers'])}")
    return GuidanceChoice(method=method, params=params, guide=guide, title=spec.title, lines=lines, argv=argv)
