"""``cfgdiff train-classifier``: the noisy classifier p_φ(c | z_λ) of the classifier-guidance baseline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cfgdiff.cli.arguments import UsageError, device, output_path, positive_float, positive_int
from cfgdiff.cli.data_options import add_data_options, data_spec_from_args
from cfgdiff.cli.training_options import add_loop_options, loop_changes, train_with_progress

EXIT_OK = 0


def add_parser(sub) -> None:
    from cfgdiff.data import DATASETS

    p = sub.add_parser("train-classifier", help="train the noisy classifier p_phi(c | z_lambda) of classifier guidance",
                       description="Train a classifier on noisy inputs z_lambda = alpha x + sigma eps, for "
                                   "classifier guidance (Dhariwal & Nichol 2021), the baseline the paper argues "
                                   "against. Written to RUN_DIR/classifier.safetensors.")
    add_data_options(p, data_help=f"image data: {', '.join(sorted(k for k in DATASETS if k != 'gmm2d'))}, a path "
                                  "(format found from its content), or hf:PATH (default: digits)",
                     hflip=False)  # flips are the training loop's option (LoopConfig.hflip)
    p.add_argument("--run-dir", type=output_path("--run-dir", directory=True),
                   default=None, help="run directory (default runs/DATA-classifier)")
    p.add_argument("--steps", type=positive_int("--steps"), default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=positive_float("--lr"), default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument("--base-channels", type=positive_int("--base-channels"), default=16,
                   help="width of the first level (default 16)")
    p.add_argument("--logsnr-schedule", choices=("cosine", "uniform"), default="cosine",
                   help="training λ distribution (use the diffusion run's; default cosine)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    p.add_argument("--resume", action="store_true", help="continue the classifier in --run-dir")
    p.add_argument("--overwrite", action="store_true", help="replace the classifier in --run-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_loop_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cfgdiff.data import DataSpec
    from cfgdiff.training.classifier import ClassifierConfig, describe, train_classifier

    spec = data_spec_from_args(args, default="digits")
    if spec.source == "gmm2d":
        raise UsageError("the noisy classifier is for image data; gmm2d is not")
    extra = {}
    if spec != DataSpec(source=spec.source):  # options beyond the source travel as the DataSpec
        extra["data_spec"] = spec.to_json()
    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / f"{Path(spec.source).name}-classifier"
    config = ClassifierConfig(data=spec.source, **extra, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              base_channels=args.base_channels, logsnr_schedule=args.logsnr_schedule, seed=args.seed,
                              device=args.device, **{k: v for k, v in loop_changes(args).items() if v is not None})
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other")
    t0 = time.perf_counter()
    model, meta = train_with_progress(train_classifier, config, run_dir, args, "train-classifier")
    if meta.get("world_size", 1) > 1 and not model.is_main:
        return EXIT_OK
    if model.interrupted:
        print(f"stopped by {model.interrupted} at step {meta['step']}; checkpoint written to {run_dir}; resume "
              f"with: cfgdiff train-classifier --run-dir {run_dir} --resume --steps {config.steps}")
        return EXIT_OK
    print(f"done: {describe(meta)}; {time.perf_counter() - t0:.0f} s; checkpoint in {run_dir}")
    return EXIT_OK
