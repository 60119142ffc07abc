"""``cfgdiff train``: train a class-conditional diffusion model with label dropout (Algorithm 1), or its guided model
directly with guidance-free training (``--objective gft``, ``cfgdiff.training.losses.GuidanceFreeLoss``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cfgdiff.cli.arguments import (
    UsageError,
    device,
    duration,
    format_duration,
    level_list,
    nonnegative_float,
    nonnegative_int,
    output_path,
    positive_float,
    positive_int,
    progress,
)
from cfgdiff.cli.arguments import unit_float as _unit_float
from cfgdiff.cli.config_file import RESOLVED_CONFIG_FILE, write_resolved_config
from cfgdiff.cli.data_options import add_data_options, data_spec_from_args
from cfgdiff.cli.training_options import add_loop_options, loop_changes

EXIT_OK = 0


def add_parser(sub) -> None:
    from cfgdiff.data import DATASETS

    p = sub.add_parser(
        "train", help="train a class-conditional diffusion model with label dropout",
        description="Train eps_theta(z, logsnr, c) with label dropout to the null class (Ho & Salimans 2022, "
                    "Algorithm 1). Defaults that depend on the data set (steps, batch size, learning rate, "
                    "architecture) come from its preset; every flag below overrides one of them.",
    )
    add_data_options(p, data_help=f"a built-in data set ({', '.join(sorted(DATASETS))}), a path (format found from "
                                  "its content), or hf:PATH (default: digits; on --resume: the run's)",
                     hflip=False)  # --hflip is a loop option (training_options)
    p.add_argument("--run-dir", type=output_path("--run-dir", directory=True), default=None,
                   help="run directory (default: runs/DATA)")
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
    p.add_argument("--objective", choices=("cfg", "gft"), default=None,
                   help="cfg: label dropout, sampled with classifier-free guidance (2 rows per guided step); gft: "
                        "guidance-free training (Chen et al. 2025), the network takes w and is itself the guided "
                        "model, sampled at any w in [0, --gft-w-max] with 1 row per step (default cfg; fixed for "
                        "the run)")
    p.add_argument("--gft-w-max", type=positive_float("--gft-w-max"), default=None, metavar="W",
                   help="with --objective gft: the largest guidance weight w the network learns (beta ~ U(1/(1+W), "
                        "1), w = 1/beta - 1); sample/eval refuse w above it (default 4)")
    p.add_argument("--ema-decay", type=_unit_float("--ema-decay"), default=None,
                   help="decay of the weights' exponential moving average used for sampling (default 0.999)")
    p.add_argument("--warmup-steps", type=nonnegative_int("--warmup-steps"), default=None,
                   help="steps of linear learning-rate warm-up (default: the preset's, 200 unless it says "
                        "otherwise, but never more than 10%% of --steps)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default=None,
                   help="learning rate after the warm-up: cosine decay to 5%% of --lr at the last step, or constant "
                        "(default cosine; a run made before the schedule existed keeps constant on --resume)")
    p.add_argument("--time-budget", type=duration("--time-budget"), default=None, metavar="DURATION",
                   help="train for this long (90s, 10m, 1.5h; counted from the command's start): the step time "
                        "is measured in a few dry steps, --steps (and so the schedule) is fitted to the budget, "
                        "and the run ends with a checkpoint; replaces --steps; one process only")
    p.add_argument("--grad-clip", type=nonnegative_float("--grad-clip"), default=None,
                   help="maximum global gradient norm, 0 for none (default 1)")
    p.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=None,
                   help="steps between checkpoints; one is always written at the end (default 500)")
    p.add_argument("--log-every", type=positive_int("--log-every"), default=None,
                   help="steps between lines of loss.jsonl (default 50)")
    p.add_argument("--model", choices=("small", "base", "large"), default=None,
                   help="architecture preset for the data's shape (README: Model presets); default: the data "
                        "set's own defaults for digits/gmm2d, else small on a CPU and base on an accelerator")
    p.add_argument("--base-channels", type=positive_int("--base-channels"), default=None,
                   help="U-Net width at full resolution (overrides the preset; 16 for digits)")
    p.add_argument("--channel-mults", type=level_list("--channel-mults", minimum=1), default=None,
                   help="U-Net width multiplier per resolution level, e.g. 1,2,2,2 (overrides the preset)")
    p.add_argument("--num-res-blocks", type=positive_int("--num-res-blocks"), default=None,
                   help="residual blocks per U-Net level (overrides the preset)")
    p.add_argument("--attn-levels", type=level_list("--attn-levels", allow_none=True), default=None,
                   help="U-Net levels (0 = full resolution) with self-attention, e.g. 1,2; 'none' for none "
                        "(overrides the preset)")
    p.add_argument("--dropout", type=_unit_float("--dropout"), default=None,
                   help="dropout in the U-Net's residual blocks (overrides the preset)")
    p.add_argument("--seed", type=int, default=None, help="seed of the weights and of every random draw (default 0)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir; optimisation flags (steps, lr, batch size, ...) may "
                        "change and the change is logged; data, p_uncond, schedule, architecture and seed may not")
    p.add_argument("--overwrite", action="store_true", help="delete the run in --run-dir and start anew")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_loop_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cfgdiff.data import DataSpec, load_dataset
    from cfgdiff.training import DATA_DEFAULTS, default_config, train
    from cfgdiff.training.budget import TimeBudget
    from cfgdiff.training.config import WARMUP_FRACTION, LoopConfig, preset_defaults

    started = getattr(args, "started", None) or time.monotonic()
    if args.time_budget is not None:
        if args.steps is not None:
            raise UsageError("--time-budget chooses the number of steps; give it or --steps, not both")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--time-budget trains in one process (under torchrun each process would time itself "
                             "differently); give --steps instead")
    spec = data_spec_from_args(args, default="digits")
    data = spec.source
    data_shape = None
    data_spec = None
    dataset = None
    if not args.resume and (data not in DATA_DEFAULTS or spec != DataSpec(source=data)):
        dataset = load_dataset(spec, "train")  # checks the data before anything is written
        data_shape = dataset.data_shape
        data_spec = spec.to_json()
    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / Path(data).name
    changes = {
        "data": args.data, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "p_uncond": args.p_uncond, "logsnr_schedule": args.logsnr_schedule, "ema_decay": args.ema_decay,
        "objective": args.objective, "gft_w_max": args.gft_w_max,
        "warmup_steps": args.warmup_steps, "grad_clip": args.grad_clip, "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every, "seed": args.seed, "device": args.device, "lr_schedule": args.lr_schedule,
        **loop_changes(args),
    }
    overrides = {k: v for k, v in changes.items() if k != "data"}
    overrides["device"] = args.device or "cpu"
    if args.resume and args.model is not None:
        raise UsageError("--model cannot change on --resume (the architecture is fixed by the run); start a new run "
                         "with --run-dir or --overwrite")
    from cfgdiff.training import TrainConfig

    # a cfg run's resolved config carries the default w_max (its field, unused): only another value is refused
    if not args.resume and args.objective != "gft" and args.gft_w_max not in (None, TrainConfig.gft_w_max):
        raise UsageError("--gft-w-max goes with --objective gft (a cfg run is guided at sampling time, at any w)")
    config = default_config(data, data_shape=data_shape, size=args.model, **overrides)
    config.data_spec = data_spec
    budget = None
    if args.time_budget is not None:
        preset = preset_defaults(data, data_shape=data_shape, size=args.model, device=overrides["device"])
        budget = TimeBudget(args.time_budget, started,
                            preset_warmup=int(preset.get("warmup_steps", LoopConfig.warmup_steps)),
                            warmup_explicit=args.warmup_steps is not None or args.resume)
    if args.warmup_steps is not None and args.steps is not None and not args.resume \
            and args.warmup_steps > WARMUP_FRACTION * args.steps:
        print(f"cfgdiff: warning: --warmup-steps {args.warmup_steps} is more than {WARMUP_FRACTION:.0%} of "
              f"--steps {args.steps}: the learning rate reaches --lr only after {args.warmup_steps} steps",
              file=sys.stderr)
    if not args.resume:
        _warn_small_data(dataset if dataset is not None else load_dataset(spec, "train"), config.batch_size)
    knobs = {"base_channels": args.base_channels, "channel_mults": args.channel_mults,
             "num_res_blocks": args.num_res_blocks, "attn_levels": args.attn_levels, "dropout": args.dropout}
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if knobs:
        if config.model.get("arch", "unet") != "unet":
            raise UsageError(f"{', '.join('--' + k.replace('_', '-') for k in knobs)} set U-Net knobs, but {data} "
                             f"trains an {config.model['arch']}")
        config.model.update(knobs)
        if not args.resume:
            _check_model(config, data_shape)  # ValueError: one line, exit 2
        changes["model"] = {**config.model}
    bar = None
    t0 = time.perf_counter()

    def on_start(trainer) -> None:
        nonlocal bar
        n_params = sum(p.numel() for p in trainer.model.parameters())
        tc = trainer.config
        if budget is not None:
            chosen = budget.chosen
            print(f"time budget {format_duration(budget.seconds)}: {chosen['step_seconds'] * 1e3:.1f} ms a step "
                  f"(measured in dry steps), so {chosen['steps'] - trainer.step} steps to step {chosen['steps']}, "
                  f"warm-up {tc.warmup_steps}, {tc.lr_schedule} learning rate; "
                  f"{format_duration(budget.left())} left", file=sys.stderr)
        verb = "resuming" if args.resume else "training"
        print(f"{verb} {trainer.model.config()['arch']} ({n_params / 1e6:.2f}M parameters) on {tc.data} "
              f"(train split, {len(trainer.dataset)} examples) at step {trainer.step} of {tc.steps}, "
              f"batch {tc.batch_size}, lr {tc.lr:g}, p_uncond={tc.p_uncond}, objective {tc.objective}"
              f"{f' (w in [0, {tc.gft_w_max:g}])' if tc.objective == 'gft' else ''}, run dir {run_dir}",
              file=sys.stderr)
        print(f"  {_runtime_line(trainer)}", file=sys.stderr)
        write_resolved_config(args, run_dir / RESOLVED_CONFIG_FILE,  # beside config.json; --config reads it back
                              fill={**trainer.config.to_json(), "run_dir": run_dir})
        bar = progress(tc.steps, "train", args.no_progress)
        bar.unit = "step"
        bar.n = bar.last_print_n = bar.initial = trainer.step  # steps/s and time left count this session only
        bar.refresh()

    def on_step(step: int, loss: float) -> None:
        bar.update(step - bar.n)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    try:
        trainer = train(config, run_dir, resume=args.resume, overwrite=args.overwrite,
                        resume_changes={k: v for k, v in changes.items() if v is not None},
                        on_step=on_step, on_start=on_start, time_budget=budget)
    finally:
        if bar is not None:
            bar.close()
    if not trainer.dist.is_main:
        return EXIT_OK
    if trainer.interrupted:
        print(f"stopped by {trainer.interrupted} at step {trainer.step} of {trainer.config.steps}; checkpoint "
              f"written to {run_dir}; resume with: cfgdiff train --run-dir {run_dir} --resume")
        return EXIT_OK
    spent = f"{time.perf_counter() - t0:.0f} s"
    if budget is not None:
        early = ", ended early by the deadline" if "stopped_early_at" in budget.chosen else ""
        spent = (f"{time.monotonic() - started:.1f} s of a {format_duration(budget.seconds)} budget (start-up "
                 f"included{early})")
    print(f"done: step {trainer.step}, {spent}; checkpoint in {run_dir}")
    return EXIT_OK


SMALL_CLASS = 5  # a class with fewer training images than this is warned about


def _warn_small_data(dataset, batch_size: int) -> None:
    """One warning line for a data set too small for what it is asked to train (it still trains)."""
    import torch

    n = len(dataset)
    problems = []
    if n < batch_size:
        problems.append(f"{n} examples, fewer than the batch of {batch_size} (each batch repeats them)")
    labels = getattr(dataset, "labels", None)
    k = int(getattr(dataset, "num_classes", 0) or 0)
    if labels is not None and k:
        counts = torch.bincount(torch.as_tensor(labels).long().flatten(), minlength=k)
        if n < k:
            problems.append(f"fewer examples than its {k} classes")
        elif int(counts.min()) < SMALL_CLASS:
            c = int(counts.argmin())
            names = tuple(getattr(dataset, "class_names", ()) or ())
            name = f" ({names[c]})" if c < len(names) else ""
            problems.append(f"class {c}{name} has {int(counts[c])} example(s), fewer than {SMALL_CLASS}")
    if problems:
        print(f"cfgdiff: warning: the training data is very small: {'; '.join(problems)}; the model can only "
              "memorise it", file=sys.stderr)


def _check_model(config, data_shape: tuple[int, ...] | None) -> None:
    """Build the network once on the meta device so that a knob no U-Net can take fails before anything is
    written (ValueError with the reason). ``data_shape``: the loaded data's, or None for a built-in set."""
    import torch

    from cfgdiff.models import build_model
    from cfgdiff.training.config import BUILTIN_SHAPES

    shape = data_shape or BUILTIN_SHAPES[config.data]
    with torch.device("meta"):
        build_model({**config.model, "image_shape": list(shape), "num_classes": 10})


def _runtime_line(trainer) -> str:
    """How the steps run: processes, micro-batches, device, precision, batches (the banner's second line)."""
    loop, stream = trainer.loop, trainer.stream
    parts = [f"{trainer.dist.world_size} process(es) x {loop.grad_accum} micro-batch(es) of {stream.size} on "
             f"{trainer.device}"]
    form = trainer.form
    parts.append(("bf16 autocast" if form.bf16 else "fp32") + ("" if form.chosen_by == "asked" else
                                                                f" ({form.chosen_by}, --precision {loop.precision})"))
    if loop.compile:
        parts.append(f"torch.compile ({loop.compile_backend})")
    if form.channels_last and trainer.dataset.is_image:
        parts.append("channels_last")
    loader = f"streaming loader, {loop.workers} worker(s)" if stream.streaming else "in-memory batches"
    parts.append(loader + (", random flips" if stream.order.hflip else ""))
    parts.append(f"checkpoints every {loop.checkpoint_every} steps"
                 + (f" and {loop.save_every_minutes:g} min" if loop.save_every_minutes else "")
                 + f", keeping {loop.keep}")
    return "; ".join(parts)
