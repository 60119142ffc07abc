"""``cfgdiff train``: train a class-conditional diffusion model with label dropout (Algorithm 1)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cfgdiff.cli.arguments import device, nonnegative_float, nonnegative_int, positive_float, positive_int, progress
from cfgdiff.cli.arguments import unit_float as _unit_float

EXIT_OK = 0


def add_parser(sub) -> None:
    from cfgdiff.data import DATASETS

    p = sub.add_parser(
        "train", help="train a class-conditional diffusion model with label dropout",
        description="Train eps_theta(z, logsnr, c) with label dropout to the null class (Ho & Salimans 2022, "
                    "Algorithm 1). Defaults that depend on the data set (steps, batch size, learning rate, "
                    "architecture) come from its preset; every flag below overrides one of them.",
    )
    p.add_argument("--data", default=None, metavar="DATA",
                   help=f"data set: {', '.join(sorted(DATASETS))} (default: digits; on --resume: the run's)")
    p.add_argument("--class-names", default=None,
                   help="class names for data that carries none (IDX): comma-separated, or a text file with one "
                        "name per line")
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/DATA)")
    p.add_argument("--steps", type=positive_int("--steps"), default=None,
                   help="total optimizer steps (default by data set: 4000 for digits, 3000 for gmm2d; "
                        "on --resume: the run's total, or a larger total to train further)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help="examples per optimizer step (default by data set: 128 for digits, 512 for gmm2d)")
    p.add_argument("--lr", type=positive_float("--lr"), default=None,
                   help="peak AdamW learning rate (default by data set: 2e-3 for digits, 1e-3 for gmm2d)")
    p.add_argument("--p-uncond", type=_unit_float("--p-uncond"), default=None,
                   help="label dropout probability: the share of examples trained as the null class (default 0.1)")
    p.add_argument("--logsnr-schedule", choices=("cosine", "uniform"), default=None,
                   help="training distribution of the log-SNR (default cosine, the paper's)")
    p.add_argument("--ema-decay", type=_unit_float("--ema-decay"), default=None,
                   help="decay of the weights' exponential moving average used for sampling (default 0.999)")
    p.add_argument("--warmup-steps", type=nonnegative_int("--warmup-steps"), default=None,
                   help="steps of linear learning-rate warm-up (default 200)")
    p.add_argument("--grad-clip", type=nonnegative_float("--grad-clip"), default=None,
                   help="maximum global gradient norm, 0 for none (default 1)")
    p.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=None,
                   help="steps between checkpoints; one is always written at the end (default 500)")
    p.add_argument("--log-every", type=positive_int("--log-every"), default=None,
                   help="steps between lines of loss.jsonl (default 50)")
    p.add_argument("--base-channels", type=positive_int("--base-channels"), default=None,
                   help="U-Net width at full resolution (default 16 for digits)")
    p.add_argument("--seed", type=int, default=None, help="seed of the weights and of every random draw (default 0)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir; optimisation flags (steps, lr, batch size, ...) may "
                        "change and the change is logged; data, p_uncond, schedule, architecture and seed may not")
    p.add_argument("--overwrite", action="store_true", help="delete the run in --run-dir and start anew")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cfgdiff.data import DataSpec, load_dataset
    from cfgdiff.training import DATA_DEFAULTS, default_config, train

    data = args.data or "digits"
    data_shape = None
    data_spec = None
    if data not in DATA_DEFAULTS and not args.resume:
        names = None
        if args.class_names is not None:
            path = Path(args.class_names)
            text = path.read_text() if path.is_file() else args.class_names.replace(",", "\n")
            names = tuple(line.strip() for line in text.splitlines() if line.strip())
        spec = DataSpec(source=data, class_names=names)
        data_shape = load_dataset(spec, "train").data_shape  # checks the data before anything is written
        data_spec = spec.to_json()
    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / Path(data).name
    changes = {
        "data": args.data, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "p_uncond": args.p_uncond, "logsnr_schedule": args.logsnr_schedule, "ema_decay": args.ema_decay,
        "warmup_steps": args.warmup_steps, "grad_clip": args.grad_clip, "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every, "seed": args.seed, "device": args.device,
    }
    overrides = {k: v for k, v in changes.items() if k != "data"}
    overrides["device"] = args.device or "cpu"
    config = default_config(data, data_shape=data_shape, **overrides)
    config.data_spec = data_spec
    if args.base_channels is not None:
        config.model["base_channels"] = args.base_channels
        changes["model"] = {**config.model}
    bar = None
    t0 = time.perf_counter()

    def on_start(trainer) -> None:
        nonlocal bar
        n_params = sum(p.numel() for p in trainer.model.parameters())
        tc = trainer.config
        verb = "resuming" if args.resume else "training"
        print(f"{verb} {trainer.model.config()['arch']} ({n_params / 1e6:.2f}M parameters) on {tc.data} "
              f"(train split, {len(trainer.dataset)} examples) at step {trainer.step} of {tc.steps}, "
              f"batch {tc.batch_size}, lr {tc.lr:g}, p_uncond={tc.p_uncond}, run dir {run_dir}", file=sys.stderr)
        bar = progress(tc.steps, "train", args.no_progress)
        bar.update(trainer.step)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    try:
        trainer = train(config, run_dir, resume=args.resume, overwrite=args.overwrite,
                        resume_changes={k: v for k, v in changes.items() if v is not None},
                        on_step=on_step, on_start=on_start)
    finally:
        if bar is not None:
            bar.close()
    print(f"done: step {trainer.step}, {time.perf_counter() - t0:.0f} s; checkpoint in {run_dir}")
    return EXIT_OK
