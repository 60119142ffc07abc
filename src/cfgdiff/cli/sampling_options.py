"""Sampling options shared by ``cfgdiff sample`` and ``cfgdiff eval``, and the one guided run they build from them.

``add_sampler_options(p)`` adds sampler, steps, grid, v, eta, interval and clipping; ``guided_run_from_args(args,
source, choice, student=...)`` turns the checked options, the model source (``cli.model_source``) and the guidance
choice (``cli.guidance_options``) into a ``cfgdiff.sampling.pipeline.GuidedRun``: the object both commands sample
through, which counts network evaluations once. ``distilled_student`` treats a distilled run (a ``Student`` at
each w, never a guidance wrapper; a progressive stage's own steps and sampler).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cfgdiff.cli.arguments import UsageError, float_list, positive_int, unit_float
from cfgdiff.sampling.solvers import SAMPLERS


class RecordGiven(argparse.Action):
    """Store the value and add the option's dest to ``args.given``: a default can then be told from the same value
    given explicitly (a progressive-distilled run samples with its own steps and sampler unless they are given)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = frozenset(getattr(namespace, "given", frozenset())) | {self.dest}


def add_sampler_options(p: argparse.ArgumentParser, *, steps: int, sampler: str) -> None:
    """Options every sampling command shares: sampler, steps, grid, v, eta, interval, clipping."""
    p.add_argument("--steps", type=positive_int("--steps"), default=steps, action=RecordGiven,
                   help=f"sampling steps (default {steps}; a progressive-distilled run: its own)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=sampler, action=RecordGiven,
                   help=f"sampler (default {sampler}; ancestral is the paper's Algorithm 2; a progressive-distilled "
                        "run: ddim)")
    p.add_argument("--grid", choices=("cosine", "uniform", "edm"), default=None,
                   help="log-SNR grid of the sampler (default: cosine; heun: edm)")
    p.add_argument("--v-interp", type=unit_float("--v-interp"), default=0.3,
                   help="the paper's v: reverse variance (σ̃²)^(1-v) (σ²_{λ|λ'})^v (ancestral only; default 0.3)")
    p.add_argument("--eta", type=float, default=None, help="noise scale of dpmpp_2m_sde (default 1)")
    p.add_argument("--interval", type=float_list, default=None, metavar="SIGMA_LO,SIGMA_HI",
                   help="guidance interval: guide only where sigma = exp(-logsnr/2) lies in (SIGMA_LO, SIGMA_HI], "
                        "one unguided network call per step elsewhere (Kynkaanniemi et al. 2024)")
    p.add_argument("--no-clip", action="store_true", help="do not clip x̂ to the data range ([-1, 1] for images)")


def sampler_kwargs(args: argparse.Namespace, x_bound: float) -> dict:
    """The sampler's keyword arguments from the shared options (checked)."""
    kwargs: dict = {"clip_x": False if args.no_clip else x_bound}
    if args.sampler == "ancestral":
        kwargs["v_interp"] = args.v_interp
    if args.grid is not None:
        kwargs["grid"] = args.grid
    if args.eta is not None:
        if args.sampler != "dpmpp_2m_sde" or args.eta < 0:
            raise UsageError("--eta takes a number >= 0 and only goes with --sampler dpmpp_2m_sde")
        kwargs["eta"] = args.eta
    return kwargs


def interval_of(args: argparse.Namespace) -> tuple[float, float] | None:
    """``--interval SIGMA_LO,SIGMA_HI`` checked (UsageError otherwise), or None."""
    if args.interval is None:
        return None
    if not (len(args.interval) == 2 and 0 <= args.interval[0] < args.interval[1]):
        raise UsageError("--interval takes SIGMA_LO,SIGMA_HI with 0 <= SIGMA_LO < SIGMA_HI")
    return float(args.interval[0]), float(args.interval[1])


def guided_run_from_args(args: argparse.Namespace, source: Any, choice: Any, *, student: Any = None,
                         network_options: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                         interval: tuple[float, float] | None = None, steps: int | None = None) -> Any:
    """The ``GuidedRun`` of ``cfgdiff sample``/``eval``/``tune``: ``source``'s model (or the distilled ``student``),
    the guidance ``choice``, ``--interval``, the sampler options, the trained log-SNR range and a latent model's
    decoder (``source.sampler_options``), ``network_options`` (precision, memory_format, compile_network:
    ``cli.network_options.network_options``; a ``--precision`` given beats a diffusers source's bf16 on CUDA).
    ``params``, ``interval`` and ``steps`` override the choice's parameters, ``--interval`` and ``--steps`` (one
    trial of a tune)."""
    from cfgdiff.sampling.pipeline import GuidedRun

    options = sampler_kwargs(args, source.x_bound)
    options.update(network_options or {})
    from_source = dict(source.sampler_options(args.sampler))  # trained log-SNR range, latent decoding, bf16 on CUDA
    if getattr(args, "precision", None) is not None:
        from_source.pop("autocast", None)  # the precision asked for beats the source's default
    options.update(from_source)
    options.update(batch_size=args.batch_size, data_shape=source.data_shape, device=args.device)
    steps = args.steps if steps is None else steps
    if student is not None:  # already guided at every w: no method, no interval
        return GuidedRun.from_options(student, sampler=args.sampler, steps=steps, **options)
    return GuidedRun.from_options(source.eps_fn, sampler=args.sampler, steps=steps, method=choice.method,
                                  params={**choice.params, **(params or {})},
                                  interval=interval if interval is not None else interval_of(args), **options)


def _refuse_guidance_options(args: argparse.Namespace, what: str) -> None:
    """UsageError for a guidance option given to an already guided model (``what`` names it)."""
    if getattr(args, "interval", None) is not None:
        raise UsageError(f"--interval does not apply to {what}: it is guided at every step in one row")
    if getattr(args, "guidance", "cfg") not in (None, "cfg") or getattr(args, "classifier", None) is not None:
        raise UsageError(f"{what} is already guided: --guidance and --classifier do not apply")


def distilled_student(args: argparse.Namespace, source, ws) -> Any:
    """The already guided model of a run for ``cfgdiff sample``/``eval``: the ``Student`` of a distilled run, the
    ``GuidanceFreeModel`` of a run trained with ``--objective gft``; None for any other model source. Both are
    sampled through ``at(w)``, one network row per step.

    Checks before any work: every w in the model's range (else ``WRangeError``/``GuidanceFreeRangeError``, exit 2),
    no guidance option (the model is already guided: ``--interval``, another ``--guidance``, ``--classifier`` are
    refused). A progressive stage samples with its own steps and DDIM unless ``--steps``/``--sampler`` were given;
    other values are allowed and warned about.
    """
    from cfgdiff.distillation import DISTILLATION_KEY, load_student
    from cfgdiff.training.guidance_free import guidance_free_info, load_guidance_free

    if getattr(source, "kind", None) != "run":
        return None
    if guidance_free_info(source.meta or {}) is not None:
        model = load_guidance_free(args.run_dir, ema=not getattr(args, "raw_weights", False), device=args.device)
        for w in ws:
            model.check(w)
        _refuse_guidance_options(args, "a guidance-free trained model (--objective gft)")
        return model
    if not (source.meta or {}).get(DISTILLATION_KEY):
        return None
    student = load_student(args.run_dir, ema=not getattr(args, "raw_weights", False), device=args.device)
    for w in ws:
        student.w_range.check(w)
    _refuse_guidance_options(args, "a distilled student")
    sampling = student.sampling
    if sampling:
        given = getattr(args, "given", frozenset())
        if "steps" not in given:
            args.steps = int(sampling["steps"])
        elif args.steps != int(sampling["steps"]):
            print(f"cfgdiff: warning: this student was distilled for {sampling['steps']} {sampling['sampler']} "
                  f"steps; sampling it with {args.steps} is allowed but not what it learned", file=sys.stderr)
        if "sampler" not in given:
            args.sampler = sampling["sampler"]
        elif args.sampler != sampling["sampler"]:
            print(f"cfgdiff: warning: this student was distilled for the {sampling['sampler']} sampler; "
                  f"{args.sampler} is allowed but not what it learned", file=sys.stderr)
        if getattr(args, "grid", None) not in (None, sampling.get("grid", "cosine")):
            print(f"cfgdiff: warning: this student was distilled on the {sampling.get('grid', 'cosine')} log-SNR "
                  f"grid; --grid {args.grid} is allowed but not what it learned", file=sys.stderr)
    return student
