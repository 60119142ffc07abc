"""``cfgdiff distill``: guidance distillation (stage 1) and progressive distillation (stage 2) of a trained run.

Stage 1 (Meng et al. 2023): ``cfgdiff distill RUN_DIR --w-range 0,4 --run-dir DIR`` trains a w-conditioned
student that computes the guided (1 + w) ε(z, c) - w ε(z) in one network call. Stage 2 (Salimans & Ho 2022):
``cfgdiff distill STUDENT_DIR --progressive --steps-from N --run-dir DIR`` halves the DDIM steps, N → N/2,
one halving per invocation (the next one takes DIR as its teacher, its steps recorded).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cfgdiff.cli.arguments import (
    UsageError,
    device,
    nonnegative_float,
    nonnegative_int,
    output_path,
    positive_float,
    positive_int,
    progress,
)
from cfgdiff.cli.arguments import unit_float as _unit_float
from cfgdiff.cli.training_options import add_loop_options, loop_changes

EXIT_OK = 0


def _w_range(text: str):
    from cfgdiff.distillation import WRange, WRangeError

    try:
        return WRange.parse(text)
    except WRangeError as err:
        raise argparse.ArgumentTypeError(f"--w-range: {err}") from None


def _steps_from(text: str) -> int:
    value = positive_int("--steps-from")(text)
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"--steps-from must be an even number >= 2 (each stage halves it), got {text}")
    return value


def add_parser(sub) -> None:
    from cfgdiff.distillation.progressive import WEIGHTINGS
    from cfgdiff.distillation.run import DISTILL_DEFAULTS, STAGE_STEPS

    d = DISTILL_DEFAULTS
    p = sub.add_parser(
        "distill", help="distil a trained run: guided sampling in one network call, then fewer DDIM steps",
        description="Stage 1, guidance distillation (Meng et al. 2023): a student with the teacher's architecture "
                    "plus an embedding of w learns the guided prediction (1+w) eps(z,c) - w eps(z) for w drawn "
                    "from --w-range, so a guided step costs one network row. Stage 2 (--progressive), progressive "
                    "distillation (Salimans & Ho 2022): a distilled student learns to take one DDIM step where its "
                    "teacher takes two, N -> N/2 steps per invocation. Each stage is a run directory that records "
                    "its teacher (path, step, SHA-256); sample and eval use it at any w in its range.",
    )
    p.add_argument("teacher", type=Path, metavar="RUN_DIR",
                   help="the teacher: a trained run (stage 1) or a distilled run (--progressive)")
    p.add_argument("--run-dir", type=output_path("--run-dir", directory=True),
                   required=True, help="the student's run directory")
    p.add_argument("--w-range", type=_w_range, default=None, metavar="W_MIN,W_MAX",
                   help="guidance weights (the paper's w) the student learns, drawn uniformly; required for stage 1, "
                        "e.g. 0,4; with --progressive: the teacher's range (default) or a range inside it. The "
                        "student refuses any w outside its range")
    p.add_argument("--progressive", action="store_true",
                   help="stage 2: distil a distilled run's DDIM sampler from --steps-from N steps to N/2")
    p.add_argument("--steps-from", type=_steps_from, default=None, metavar="N",
                   help="--progressive: the teacher's DDIM steps (even); the student takes N/2. Required when the "
                        "teacher is a stage-1 student (e.g. 32); a stage-2 teacher's own steps by default")
    p.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                   help="--progressive: loss weighting, max(SNR,1)||x - x~||^2 (truncated_snr, Salimans & Ho's, "
                        "default) or the eps-loss (snr)")
    p.add_argument("--steps", type=positive_int("--steps"), default=None,
                   help=f"total optimizer steps (default {STAGE_STEPS['guidance']} for stage 1, "
                        f"{STAGE_STEPS['progressive']} per halving; on --resume: a larger total to train further)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help=f"examples per optimizer step (default {d['batch_size']})")
    p.add_argument("--lr", type=positive_float("--lr"), default=None,
                   help=f"peak AdamW learning rate (default {d['lr']:g}: the student starts from a trained teacher)")
    p.add_argument("--ema-decay", type=_unit_float("--ema-decay"), default=None,
                   help=f"decay of the weights' moving average used for sampling (default {d['ema_decay']})")
    p.add_argument("--warmup-steps", type=nonnegative_int("--warmup-steps"), default=None,
                   help=f"steps of linear learning-rate warm-up (default {d['warmup_steps']})")
    p.add_argument("--grad-clip", type=nonnegative_float("--grad-clip"), default=None,
                   help="maximum global gradient norm, 0 for none (default 1)")
    p.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=None,
                   help=f"steps between checkpoints; one is always written at the end "
                        f"(default {d['checkpoint_every']})")
    p.add_argument("--log-every", type=positive_int("--log-every"), default=None,
                   help=f"steps between lines of loss.jsonl (default {d['log_every']})")
    p.add_argument("--seed", type=int, default=None, help="seed of every random draw (default 0)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    p.add_argument("--resume", action="store_true",
                   help="continue the distillation in --run-dir (same teacher, unchanged since); optimisation flags "
                        "may change, the teacher, stage, w range and steps may not")
    p.add_argument("--overwrite", action="store_true", help="delete the run in --run-dir and start anew")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_loop_options(p)
    p.set_defaults(func=run)


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    return {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "ema_decay": args.ema_decay,
            "warmup_steps": args.warmup_steps, "grad_clip": args.grad_clip, "checkpoint_every": args.checkpoint_every,
            "log_every": args.log_every, "device": args.device, **loop_changes(args)}


def run(args: argparse.Namespace) -> int:
    from cfgdiff.distillation import STAGE_GUIDANCE, STAGE_PROGRESSIVE
    from cfgdiff.distillation.run import distill, distill_config, teacher_record
    from cfgdiff.training import read_stored_config

    stage = STAGE_PROGRESSIVE if args.progressive else STAGE_GUIDANCE
    if not args.progressive and (args.steps_from is not None or args.weighting is not None):
        raise UsageError("--steps-from and --weighting go with --progressive")
    teacher = teacher_record(args.teacher)  # one line and exit 2 when there is no teacher checkpoint
    changes = {k: v for k, v in _changes(args).items() if v is not None}
    if args.resume:
        stored, _ = read_stored_config(args.run_dir)
        if stored.get("teacher") != teacher["run_dir"]:
            raise UsageError(f"{args.run_dir} distils {stored.get('teacher')}, not {teacher['run_dir']}")
        stored_range = (stored.get("w_min"), stored.get("w_max"))
        if args.w_range is not None and (args.w_range.w_min, args.w_range.w_max) != stored_range:
            raise UsageError(f"--w-range cannot change on --resume (this run distils w in [{stored_range[0]:g}, "
                             f"{stored_range[1]:g}]); start a new run with --run-dir or --overwrite")
        if args.progressive and stored.get("stage") != stage:
            raise UsageError(f"{args.run_dir} is a {stored.get('stage')} distillation; resume it without --progressive")
        given = {"steps_from": args.steps_from, "weighting": args.weighting, "seed": args.seed}
        changes.update({k: v for k, v in given.items() if v is not None})
        config = None
    else:
        config = distill_config(args.teacher, stage=stage, w_range=args.w_range, steps_from=args.steps_from,
                                weighting=args.weighting or "truncated_snr", seed=args.seed,
                                **{**changes, "device": args.device or "cpu"})
    bar = None
    t0 = time.perf_counter()

    def on_start(trainer) -> None:
        nonlocal bar
        c = trainer.config
        n_params = sum(p.numel() for p in trainer.model.parameters())
        what = (f"guidance distillation, w ~ U{c.w_range}" if c.stage == STAGE_GUIDANCE else
                f"progressive distillation, {c.steps_from} -> {c.student_steps} DDIM steps, w ~ U{c.w_range}")
        verb = "resuming" if args.resume else "distilling"
        print(f"{verb}: {what}; teacher {c.teacher} (step {c.teacher_step}, sha256 {c.teacher_sha256[:12]}); "
              f"student {trainer.model.config()['arch']} ({n_params / 1e6:.2f}M parameters) on {c.data}, step "
              f"{trainer.step} of {c.steps}, batch {c.batch_size}, lr {c.lr:g}, run dir {args.run_dir}",
              file=sys.stderr)
        bar = progress(c.steps, "distill", args.no_progress)
        bar.n = bar.last_print_n = bar.initial = trainer.step
        bar.refresh()

    def on_step(step: int, loss: float) -> None:
        bar.update(step - bar.n)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    try:
        trainer = distill(config, args.run_dir, resume=args.resume, overwrite=args.overwrite,
                          resume_changes=changes if args.resume else None, on_step=on_step, on_start=on_start)
    finally:
        if bar is not None:
            bar.close()
    if not trainer.dist.is_main:
        return EXIT_OK
    c = trainer.config
    if trainer.interrupted:
        print(f"stopped by {trainer.interrupted} at step {trainer.step} of {c.steps}; checkpoint written to "
              f"{args.run_dir}; resume with: cfgdiff distill {args.teacher} --run-dir {args.run_dir} --resume")
        return EXIT_OK
    if c.stage == STAGE_GUIDANCE:
        hint = (f"sample it with: cfgdiff sample {args.run_dir} --w {c.w_min:g},{c.w_max:g} (one network row per "
                f"step at any w in {c.w_range}); halve its DDIM steps with: cfgdiff distill {args.run_dir} "
                "--progressive --steps-from 32 --run-dir DIR")
    else:
        hint = (f"it samples with {c.student_steps} DDIM steps by default (cfgdiff sample {args.run_dir}); halve "
                f"again with: cfgdiff distill {args.run_dir} --progressive --run-dir DIR")
    print(f"done: step {trainer.step}, {time.perf_counter() - t0:.0f} s; student in {args.run_dir}; {hint}")
    return EXIT_OK


# -- distilled runs in sample and eval ------------------------------------------------------------------------
