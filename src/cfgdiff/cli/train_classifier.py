"""``cfgdiff train-classifier``: the noisy classifier p_φ(c | z_λ) of the classifier-guidance baseline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cfgdiff.cli.arguments import UsageError, device, positive_float, positive_int, progress

EXIT_OK = 0


def add_parser(sub) -> None:
    from cfgdiff.data import DATASETS

    p = sub.add_parser("train-classifier", help="train the noisy classifier p_phi(c | z_lambda) of classifier guidance",
                       description="Train a classifier on noisy inputs z_lambda = alpha x + sigma eps, for "
                                   "classifier guidance (Dhariwal & Nichol 2021), the baseline the paper argues "
                                   "against. Written to RUN_DIR/classifier.safetensors.")
    p.add_argument("--data", choices=sorted(k for k in DATASETS if k != "gmm2d"), default="digits",
                   help="image data set (default digits)")
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default runs/DATA-classifier)")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cfgdiff.classifier import ClassifierConfig, describe, train_classifier

    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / f"{args.data}-classifier"
    config = ClassifierConfig(data=args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              base_channels=args.base_channels, logsnr_schedule=args.logsnr_schedule, seed=args.seed,
                              device=args.device)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other")
    bar = progress(args.steps, "train-classifier", args.no_progress)
    t0 = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        bar.update(step - bar.n)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    with bar:
        _, meta = train_classifier(config, run_dir, resume=args.resume, overwrite=args.overwrite, on_step=on_step)
    print(f"done: {describe(meta)}; {time.perf_counter() - t0:.0f} s; checkpoint in {run_dir}")
    return EXIT_OK
