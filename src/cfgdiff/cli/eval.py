"""``cfgdiff eval``: FID and IS across guidance weights, with the table, the trade-off plots and the grids."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cfgdiff.cli.arguments import UsageError, device, float_list, positive_int, progress
from cfgdiff.cli.sample import add_sampler_options, interval_weight, sampler_kwargs

EXIT_OK = 0
SMALL_N = 500  # below this many samples per w, FID's upward bias and spread swamp most differences between w


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="FID and IS across guidance weights: table, trade-off plots, sample grids",
                       description="Sample N class-balanced images at each w from the same seeds, score FID and "
                                   "IS against the real data, and write results.{csv,md,json}, tradeoff.png, "
                                   "metrics_vs_w.png, grids_all.png and one grid per w.")
    p.add_argument("run_dir", type=Path, help="run directory of a trained diffusion model")
    p.add_argument("--w", type=float_list, default=[0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0],
                   help="guidance weights in the paper's convention (default 0,0.1,0.2,0.3,0.5,1,2,4)")
    p.add_argument("--n", type=int, default=2000, help="samples per w, class-balanced (default 2000)")
    add_sampler_options(p, steps=128, sampler="ancestral")
    p.add_argument("--guidance", default="cfg",
                   help="cfg: (1+w) eps(z,c) - w eps(z); classifier: eps(z,c) - w sigma grad log p_phi(c|z)")
    p.add_argument("--classifier", type=Path, default=None, help="noisy-classifier run dir (--guidance classifier)")
    p.add_argument("--inception-weights", type=Path, default=None,
                   help="FID Inception-v3 weights file (needs the 'inception' extra); default: the data set's "
                        "own feature classifier (digits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample noise streams (default 0)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=250,
                   help="rows per sampling chunk (default 250)")
    p.add_argument("--grid-per-class", type=positive_int("--grid-per-class"), default=8,
                   help="samples per class in each grid (default 8)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default RUN_DIR/eval/GUIDANCE-SAMPLER-TSTEPS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["cfgdiff eval", str(args.run_dir), "--w", ",".join(f"{w:g}" for w in args.w), "--n", str(args.n),
             "--steps", str(args.steps), "--sampler", args.sampler, "--seed", str(args.seed),
             "--batch-size", str(args.batch_size), "--guidance", args.guidance]
    if args.sampler == "ancestral":
        parts += ["--v-interp", f"{args.v_interp:g}"]
    if args.grid is not None:
        parts += ["--grid", args.grid]
    if args.eta is not None:
        parts += ["--eta", f"{args.eta:g}"]
    if args.interval is not None:
        parts += ["--interval", ",".join(f"{v:g}" for v in args.interval)]
    if args.classifier is not None:
        parts += ["--classifier", str(args.classifier)]
    if args.inception_weights is not None:
        parts += ["--inception-weights", str(args.inception_weights)]
    if args.no_clip:
        parts.append("--no-clip")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from cfgdiff.checkpoint import read_metadata
    from cfgdiff.data import load_dataset
    from cfgdiff.evaluation import run_sweep, write_sweep
    from cfgdiff.features import feature_extractor_for
    from cfgdiff.metrics import fid_floor, reference_statistics
    from cfgdiff.training import CHECKPOINT_FILE, load_model

    if args.n < 2:
        raise UsageError(f"--n must be >= 2 (a covariance needs two samples), got {args.n}")
    if args.guidance not in ("cfg", "classifier"):
        raise UsageError(f"--guidance must be cfg or classifier, got {args.guidance!r}")
    if args.guidance == "classifier" and args.classifier is None:
        raise UsageError("--guidance classifier needs --classifier RUN_DIR (train one with cfgdiff train-classifier)")
    if args.classifier is not None and args.guidance != "classifier":
        raise UsageError("--classifier is only used with --guidance classifier")
    if args.inception_weights is not None and not args.inception_weights.is_file():
        raise UsageError(f"--inception-weights: no file at {args.inception_weights}")
    interval_weight(args, 0.0)  # check --interval before any work
    log_prob_fn = None
    classifier_line = ""
    if args.guidance == "classifier":
        from cfgdiff.classifier import describe, load_classifier

        classifier = load_classifier(args.classifier, device=args.device)
        log_prob_fn = classifier.log_prob_fn
        classifier_line = f"- classifier: {args.classifier} ({describe(classifier.train_meta)})"
    ckpt = args.run_dir / CHECKPOINT_FILE if args.run_dir.is_dir() else args.run_dir
    meta = read_metadata(ckpt)
    data = meta.get("data", "")
    model = load_model(args.run_dir, ema=not args.raw_weights, device=args.device)
    if log_prob_fn is not None and tuple(classifier.data_shape) != tuple(model.data_shape):
        raise UsageError(f"the classifier takes {tuple(classifier.data_shape)}, the model makes "
                         f"{tuple(model.data_shape)}")
    kwargs = sampler_kwargs(args, model.x_bound)
    extractor = feature_extractor_for(data, args.inception_weights)
    reference = reference_statistics(data, "train", extractor)
    floor = fid_floor(data, extractor)
    out = args.out if args.out is not None else (
        args.run_dir / "eval" / f"{args.guidance}-{args.sampler}-T{args.steps}")
    if args.n < SMALL_N:
        print(f"cfgdiff: warning: --n {args.n} is below {SMALL_N}: FID is biased upward at small N and its spread "
              "is larger than most differences between w; compare only rows of equal N", file=sys.stderr)
    total = len(args.w) * args.n
    bar = progress(total, f"eval ({args.guidance}, {args.sampler}, {args.steps} steps)", args.no_progress)
    t0 = time.perf_counter()
    with bar:
        result = run_sweep(model, args.w, n=args.n, steps=args.steps, extractor=extractor, reference=reference,
                           sampler=args.sampler, seed=args.seed, batch_size=args.batch_size,
                           guidance=args.guidance, log_prob_fn=log_prob_fn, grid_per_class=args.grid_per_class,
                           device=args.device, on_chunk=bar.update,
                           weight_schedule=(lambda w: interval_weight(args, w)) if args.interval else None,
                           **kwargs)
    seconds = time.perf_counter() - t0
    result.meta.update({"fid_floor": floor, "floor_count": len(load_dataset(data, "test")),
                        "seconds": seconds, "command": _command_line(args), "run_dir": str(args.run_dir),
                        "train_step": int(meta.get("step", 0)),
                        "p_uncond": meta.get("train_config", {}).get("p_uncond")})
    header = [f"- command: `{result.meta['command']}`",
              f"- model: {args.run_dir} (step {result.meta['train_step']}, p_uncond {result.meta['p_uncond']})",
              f"- {args.n} samples per w (class-balanced), {args.steps} {args.sampler} steps, seed {args.seed}; "
              f"sweep wall time {seconds:.0f} s"]
    if classifier_line:
        header.append(classifier_line)
    title = f"{'Classifier-free' if args.guidance == 'cfg' else 'Classifier'} guidance sweep, {data}"
    names = tuple(getattr(model, "class_names", ())) or None
    paths = write_sweep(result, out, title=title, class_names=names, header_lines=header)
    fid_name, is_name = result.meta["fid_name"], result.meta["is_name"]
    print(f"{fid_name} floor (test vs train split): {floor:.3f}")
    for row in result.rows:
        print(f"w = {row.w:g}: {fid_name} = {row.fid:.3f}, {is_name} = {row.inception_score:.3f} "
              f"(n = {row.n}, NFE/sample = {row.nfe_per_sample:g}, {row.seconds_per_sample * 1e3:.1f} ms/sample)")
    written = [p.name for key, p in paths.items() if not key.startswith("grid_")]
    print(f"wrote {', '.join(written)} and {len(result.grids)} per-w grids in {out / 'grids'} to {out} "
          f"({seconds:.0f} s)")
    return EXIT_OK
