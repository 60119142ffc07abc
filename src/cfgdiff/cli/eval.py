"""``cfgdiff eval``: FID and IS across guidance weights, with the table, the trade-off plots and the grids."""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from cfgdiff.cli.arguments import (
    UsageError,
    check_fits_in_memory,
    check_writable,
    device,
    float_list,
    output_path,
    positive_int,
    progress,
)
from cfgdiff.cli.config_file import RESOLVED_CONFIG_FILE, write_resolved_config
from cfgdiff.cli.guidance_options import add_guidance_options, guidance_from_args
from cfgdiff.cli.model_source import add_model_source_options, load_model_source
from cfgdiff.cli.network_options import add_network_options, network_options
from cfgdiff.cli.sampling_options import add_sampler_options, distilled_student, guided_run_from_args, interval_of
from cfgdiff.cli.scoring_options import add_scoring_options, check_scoring_options, scorer_for
from cfgdiff.guidance.compose import describe_terms, positive_classes

EXIT_OK = 0
SMALL_N = 500  # below this many samples per w, FID's upward bias and spread swamp most differences between w


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="FID and IS across guidance weights: table, trade-off plots, sample grids",
                       description="Sample N class-balanced images at each w from the same seeds, score FID "
                                   "against the training and the held-out test split (each ± a bootstrap spread, "
                                   "beside real images of the same N: the floor), IS and the share of near-copies "
                                   "of training images, and write results.{csv,md,json}, tradeoff.png, "
                                   "metrics_vs_w.png, grids_all.png and one grid per w; also precision/recall, "
                                   "density/coverage, KID and the class-averaged FID in the same features. 2-D "
                                   "data (gmm2d) is scored by the sliced Wasserstein distance to held-out points, "
                                   "precision/recall/density/coverage against them and the exact guided "
                                   "log-density instead (samples.png). With --compose every sample gets the "
                                   "composition and is scored against the real images of its positive-weight "
                                   "classes, with each term's class probability under the feature classifier "
                                   "(image data only).")
    add_model_source_options(p, data_option=True)
    p.add_argument("--w", type=float_list, default=[0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0],
                   help="guidance weights in the paper's convention (default 0,0.1,0.2,0.3,0.5,1,2,4)")
    p.add_argument("--n", type=int, default=2000,
                   help="samples per w, class-balanced; with --compose, all with the composition (default 2000)")
    add_sampler_options(p, steps=128, sampler="ancestral")
    add_guidance_options(p)
    add_scoring_options(p)
    add_network_options(p)  # --precision, --memory-format, --compile
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample noise streams (default 0)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help="rows per sampling chunk (default by image size and device: on a CPU 256 up to 12x12 "
                        "pixels, else 64; 256 on an accelerator)")
    p.add_argument("--grid-per-class", type=positive_int("--grid-per-class"), default=8,
                   help="samples per class in each grid (default 8)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    p.add_argument("--out", type=output_path("--out", directory=True), default=None,
                   help="output directory (default RUN_DIR/eval/GUIDANCE-SAMPLER-TSTEPS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["cfgdiff eval", *args.model_args, "--w", ",".join(f"{w:g}" for w in args.w), "--n", str(args.n),
             "--steps", str(args.steps), "--sampler", args.sampler, "--seed", str(args.seed),
             "--batch-size", str(args.batch_size), *args.guidance_argv]
    if args.sampler == "ancestral":
        parts += ["--v-interp", f"{args.v_interp:g}"]
    if args.grid is not None:
        parts += ["--grid", args.grid]
    if args.eta is not None:
        parts += ["--eta", f"{args.eta:g}"]
    if args.interval is not None:
        parts += ["--interval", ",".join(f"{v:g}" for v in args.interval)]
    if args.inception_weights is not None:
        parts += ["--inception-weights", str(args.inception_weights)]
    if args.features is not None:
        parts += ["--features", str(args.features)]
    if args.bootstrap != 100:
        parts += ["--bootstrap", str(args.bootstrap)]
    if args.no_clip:
        parts.append("--no-clip")
    for flag, value in (("--precision", args.precision), ("--memory-format", args.memory_format)):
        if value is not None:
            parts += [flag, value]
    if args.compile:
        parts.append("--compile")
    return " ".join(parts)


def _pm(value: float | None, std: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def _fidelity_diversity(row, meta: dict) -> str:
    """", precision = … (k = 3), recall = …, density = … (k = 5), coverage = …" (empty when not measured)."""
    if row.precision is None:
        return ""
    return (f", precision = {_pm(row.precision, row.precision_std)}, recall = {_pm(row.recall, row.recall_std)} "
            f"(k = {meta.get('prdc_k')}), density = {_pm(row.density, row.density_std)}, coverage = "
            f"{_pm(row.coverage, row.coverage_std)} (k = {meta.get('density_k')})")


def _summary(result) -> list[str]:
    """What eval prints: the floors at the sweep's N, then one line per w, N beside every distance."""
    meta, n = result.meta, result.rows[0].n
    if meta.get("kind") == "vectors":
        lines = []
        if meta.get("sw_floor") is not None:
            lines.append(f"floor: SW_2 of N = {n} training points to the held-out points = "
                         f"{_pm(meta['sw_floor'], meta.get('sw_floor_std'))}")
        for row in result.rows:
            per_class = ", ".join("–" if v is None else f"{v:.3f}" for v in row.sliced_wasserstein_per_class or [])
            line = (f"w = {row.w:g}: SW_2 to held-out = {_pm(row.sliced_wasserstein, row.sliced_wasserstein_std)} "
                    f"(N = {row.n}; per class {per_class})")
            if row.log_density is not None:
                line += (f", mean log p̃_w(x|c) = {_pm(row.log_density, row.log_density_std)} (exact sampler "
                         f"{row.log_density_target:.3f})")
            line += _fidelity_diversity(row, meta)
            lines.append(line + f", NFE/sample = {row.nfe_per_sample:g}")
        return lines
    from cfgdiff.evaluation.sweep import term_probabilities_text

    fid_name, is_name = meta["fid_name"], meta["is_name"]
    lines = []
    if meta.get("compose") is not None:  # what a composition is compared with, and whether adherence is measured
        lines.append(f"composition {meta['compose']}: every distance is to {meta['reference']}"
                     + ("" if meta.get("term_prob_name") else "; p(c_i | x) per term not measured (the feature "
                                                              "network does not classify this data's classes)"))
    if meta.get("fid_floor") is not None:
        of = "" if not meta.get("reference_classes") else " of the same classes"
        at_least = "≥ " if meta.get("fid_floor_method") == "lower bound" else ""  # all the pool can resolve
        lines.append(f"floor at N = {n}: {fid_name} = {at_least}{_pm(meta['fid_floor'], meta.get('fid_floor_std'))} vs "
                     f"training split ({n} held-out test images{of}, {meta['fid_floor_method']}), "
                     f"{_pm(meta.get('fid_test_floor'), meta.get('fid_test_floor_std'))} vs test split "
                     f"({n} training images{of})")
    for row in result.rows:
        copies = "" if row.memorised is None else f", near-copies {100 * row.memorised:.1f} %"
        delta = "" if row.fid_delta is None else (f" (Δ vs w = {meta['fid_delta_baseline_w']:g}: "
                                                 f"{row.fid_delta:+.3f}" + ("" if row.fid_delta_std is None else
                                                                            f" ± {row.fid_delta_std:.3f} paired")
                                                 + ")")
        kid = "" if row.kid is None else (f", KID = {row.kid:.5f}" + ("" if row.kid_std is None else
                                                                      f" ± {row.kid_std:.5f}"))
        per_class = "" if row.fid_per_class is None else f", per-class {fid_name} = {row.fid_per_class:.3f}"
        per_class += "" if row.term_prob is None else f", p(c_i | x) per term: {term_probabilities_text(row)}"
        lines.append(f"w = {row.w:g}: {fid_name} = {_pm(row.fid, row.fid_std)} vs training split{delta}, "
                     f"{_pm(row.fid_test, row.fid_test_std)} vs test split (N = {row.n}), {is_name} = "
                     f"{_pm(row.inception_score, row.inception_score_std)}{copies}"
                     f"{_fidelity_diversity(row, meta)}{kid}{per_class} "
                     f"(NFE/sample = {row.nfe_per_sample:g}, {row.seconds_per_sample * 1e3:.1f} ms/sample)")
    return lines


def run(args: argparse.Namespace) -> int:
    from cfgdiff.sampling.sharded import sampling_group

    with sampling_group(args.device) as (dist, args.device):  # under torchrun: its group, each rank its device
        return _evaluate(args, dist)


def _evaluate(args: argparse.Namespace, dist) -> int:
    """``run`` in one process, or as one rank of torchrun's group: the ranks split the samples of each w
    (``cfgdiff.sampling.sharded``), rank 0 scores them all, once, with the one-process result, and alone
    writes and prints."""
    from cfgdiff.evaluation.sweep import run_sweep, write_sweep
    from cfgdiff.sampling.sharded import main_only

    if args.n < 2:
        raise UsageError(f"--n must be >= 2 (a covariance needs two samples), got {args.n}")
    check_scoring_options(args)
    interval_of(args)  # check --interval before any work
    source = load_model_source(args, ema=not args.raw_weights, device=args.device)  # a run or --diffusers DIR
    source.check_guidance(args.w, args.guidance)
    student = distilled_student(args, source, args.w)  # a distilled run: student.at(w), 1 row per step; else None
    args.model_args = source.command_args
    meta, model = source.meta, source.eps_fn
    if args.batch_size is None:  # the measured best chunk for this image size on this device
        from cfgdiff.models.presets import default_chunk

        args.batch_size = default_chunk(source.data_shape, args.device)
    data = source.require_data() if source.kind == "diffusers" else source.data
    choice = guidance_from_args(args, model, ws=[0.0] if student else args.w, x_bound=source.x_bound,
                                device=args.device, ema=not args.raw_weights)  # checked before any work
    args.guidance_argv = choice.argv
    terms = _composition(choice, source)  # None, or the checked terms of --compose (before any work)
    run = guided_run_from_args(args, source, choice, student=student,  # the model, guidance, sampler: one object
                               network_options=network_options(args))
    scoring, ok = main_only(lambda: scorer_for(args, meta, data, terms=terms), dist)  # rank 0 alone scores
    if not ok:
        return 2  # rank 0 stopped on bad input and says why
    spec, scorer, mixture = scoring if dist.is_main else (None, None, None)
    method_name = _already_guided_name(student) or args.guidance
    if terms is not None:  # one folder per composition: compose-3+1_8-1
        method_name += "-" + describe_terms(terms).replace(":", "").replace(",", "_")
    out = args.out if args.out is not None else source.home / "eval" / f"{method_name}-{args.sampler}-T{args.steps}"
    if dist.is_main:  # before any sampling: the folder takes files, and one w's samples fit (scored, then dropped)
        check_writable("--out", out)
        check_fits_in_memory(f"eval --n {args.n}", 2 * args.n * math.prod(source.image_shape) * 4,
                             hint="lower --n")
    if args.n < SMALL_N and dist.is_main:
        print(f"cfgdiff: warning: --n {args.n} is below {SMALL_N}: distances to real data (FID, SW) are biased "
              "upward at small N and their spread (± in the table) is larger than most differences between w; "
              "compare rows only with each other and with the floor at the same N", file=sys.stderr)
    total = len(args.w) * args.n
    # a composition reads no labels: every sample gets the null label K (as in cfgdiff sample --compose)
    labels = None if terms is None else torch.full((args.n,), source.num_classes, dtype=torch.long)
    bar = progress(total, f"eval ({args.guidance}, {args.sampler}, {args.steps} steps)",
                   args.no_progress or not dist.is_main)
    t0 = time.perf_counter()
    with bar:
        result = run_sweep(run, args.w, n=args.n, scorer=scorer, seed=args.seed, grid_per_class=args.grid_per_class,
                           on_chunk=bar.update, dist=dist, labels=labels)
    seconds = time.perf_counter() - t0
    if not dist.is_main:
        return EXIT_OK  # this rank's samples went to rank 0, which scores and writes them
    result.meta.update({"data": spec.source, "data_spec": spec.to_json(), "seconds": seconds,
                        "command": _command_line(args),
                        "run_dir": str(args.run_dir or args.diffusers),
                        "train_step": int(meta.get("step", 0)),
                        "p_uncond": meta.get("train_config", {}).get("p_uncond"),
                        "guidance": choice.method, "guidance_params": choice.record()})
    if terms is not None:
        result.meta["compose"] = describe_terms(terms)
    model_line = (f"- model: {args.run_dir} (step {result.meta['train_step']}, p_uncond {result.meta['p_uncond']})"
                  if source.kind == "run" else f"- model: {source.description}")
    header = [f"- command: `{result.meta['command']}`",
              model_line,
              f"- {args.n} samples per w ({_drawn_as(terms)}), {args.steps} {args.sampler} steps, seed {args.seed}; "
              f"sweep wall time {seconds:.0f} s"]
    if choice.method != "cfg":
        header += choice.lines
    title = f"{choice.title.split(' (')[0]} sweep, {data}"
    if student:  # already guided: one network row per step at any w, no guidance wrapper
        header.append(f"- {student.describe()}; one network row per step at every w")
        title = (f"Guidance-free trained model (GFT) sweep, {data}" if _already_guided_name(student) == "gft"
                 else f"Distilled student (guidance-distilled, {student.stage} stage) sweep, {data}")
    names = tuple(getattr(model, "class_names", ())) or None
    if terms is not None:  # the grid is one row: every sample has the composition
        names = (f"compose {describe_terms(terms)}",)
    paths = write_sweep(result, out, title=title, class_names=names, header_lines=header, mixture=mixture)
    paths["config"] = write_resolved_config(args, out / RESOLVED_CONFIG_FILE, fill={"out": out})  # for --config
    for line in _summary(result):
        print(line)
    written = [p.name for key, p in paths.items() if not key.startswith("grid_")]
    print(f"wrote {', '.join(written)} and {len(result.grids)} per-w grids in {out / 'grids'} to {out} "
          f"({seconds:.0f} s{source.step_note})")
    return EXIT_OK


def _composition(choice, source) -> tuple[tuple[int, float], ...] | None:
    """The terms of ``--compose`` (None for any other guidance), refused in one line where eval cannot score them:
    2-D data (as ``cfgdiff sample`` refuses), or no class of positive weight (nothing to compare the samples with)."""
    if choice.method != "compose":
        return None
    terms = tuple(choice.params["terms"])
    if len(source.image_shape) != 3:
        raise UsageError("eval scores compositions of image data only; for 2-D data use the Python API "
                         "(cfgdiff.guidance.compose), as cfgdiff sample --compose does")
    if not positive_classes(terms):
        raise UsageError(f"--compose {describe_terms(terms)} has no class of positive weight: eval scores a "
                         "composition against the real images of its positive-weight classes, and there are none")
    return terms


def _drawn_as(terms) -> str:
    """How the samples were drawn, for the report header."""
    if terms is None:
        return "class-balanced"
    from cfgdiff.evaluation.metrics.reference import class_words

    return (f"each with the composition {describe_terms(terms)}, scored against the real images of "
            f"{class_words(positive_classes(terms))}")


def _already_guided_name(student) -> str | None:
    """"gft" for a guidance-free trained model, "distilled" for a distilled student, None for neither."""
    if student is None:
        return None
    return str(student.record().get("objective", "distilled"))
