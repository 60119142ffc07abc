"""The ``cfgdiff`` command line: train, sample, toy.

The only module that parses arguments, prints for people and decides exit codes: 0 success, 2 bad input
(one line on stderr, no traceback, nothing written), 1 a run that failed (e.g. a diverged loss).
Guidance weights are the paper's w (ε̃ = (1 + w) ε(z, c) - w ε(z)); ``--guidance-scale`` takes s = w + 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cfgdiff.checkpoint import CheckpointError
from cfgdiff.generate import DEFAULT_BATCH_SIZE
from cfgdiff.samplers import SAMPLERS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError(message)


# -- argument helpers ----------------------------------------------------------------------------------


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    for v in values:
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"guidance weights must be finite, got {v}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _checked(name: str, kind: type, ok, bound: str):
    """An argparse type: parse ``text`` as ``kind`` and require ``ok(value)``, else one line naming the bound."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {noun}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{name} must {bound}, got {text}")
        return value

    return parse


def _unit_float(name: str):
    return _checked(name, float, lambda v: 0.0 <= v <= 1.0, "lie in [0, 1]")


def _positive_int(name: str):
    return _checked(name, int, lambda v: v >= 1, "be >= 1")


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("--device cuda asked for, but CUDA is not available")
    return text


# -- parser --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from cfgdiff.data import DATASETS

    parser = _Parser(prog="cfgdiff", description="Classifier-free diffusion guidance (Ho & Salimans 2022).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a class-conditional diffusion model with label dropout")
    p.add_argument("--data", choices=sorted(DATASETS), default="digits", help="data set (default: digits)")
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default: runs/DATA)")
    p.add_argument("--steps", type=_positive_int("--steps"), help="total optimizer steps")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"))
    p.add_argument("--lr", type=float, help="peak AdamW learning rate")
    p.add_argument("--p-uncond", type=_unit_float("--p-uncond"), help="label dropout probability (default 0.1)")
    p.add_argument("--logsnr-schedule", choices=("cosine", "uniform"), help="training λ distribution")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--checkpoint-every", type=_positive_int("--checkpoint-every"))
    p.add_argument("--log-every", type=_positive_int("--log-every"))
    p.add_argument("--base-channels", type=_positive_int("--base-channels"), help="U-Net width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=_device, default="cpu")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("sample", help="sample a grid across guidance weights from a trained run")
    p.add_argument("run_dir", type=Path, help="run directory (or its checkpoint.safetensors)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--w", type=_float_list, default=None,
                         help="guidance weights in the paper's convention, comma-separated (default 0,1,3); "
                              "eps = (1+w) eps(z,c) - w eps(z): w=0 is the conditional model")
    weights.add_argument("--guidance-scale", type=_float_list, default=None,
                         help="guidance scales s = w + 1 (the diffusers / k-diffusion convention)")
    p.add_argument("--n-per-class", type=_positive_int("--n-per-class"), default=8)
    p.add_argument("--classes", type=_int_list, default=None, help="class indices (default: all)")
    p.add_argument("--steps", type=_positive_int("--steps"), default=128)
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ancestral")
    p.add_argument("--v-interp", type=_unit_float("--v-interp"), default=0.3,
                   help="the paper's v: reverse variance (σ̃²)^(1-v) (σ²_{λ|λ'})^v (ancestral only)")
    p.add_argument("--no-clip", action="store_true",
                   help="do not clip x̂ to the data range ([-1, 1] for images)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=DEFAULT_BATCH_SIZE,
                   help=f"rows per chunk; a guided chunk is one call of 2x rows (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=_device, default="cpu")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/samples/grid.png)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--grid", choices=("cosine", "uniform", "edm"), default=None,
                   help="log-SNR grid of the sampler (default: cosine; heun: edm)")
    p.add_argument("--interval", type=_float_list, default=None, metavar="SIGMA_LO,SIGMA_HI",
                   help="guidance interval: guide only where sigma = exp(-logsnr/2) lies in (SIGMA_LO, SIGMA_HI], "
                        "one unguided network call per step elsewhere (Kynkaanniemi et al. 2024)")
    p.add_argument("--eta", type=float, default=None, help="noise scale of dpmpp_2m_sde (default 1)")
    p.add_argument("--autocast", action="store_true", help="run the network under bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")

    p = sub.add_parser("toy", help="the paper's Figure 2: exact guided densities and CFG samples, 3 Gaussians")
    p.add_argument("--w", type=_float_list, default=[0.0, 1.0, 3.0, 10.0], help="guidance weights (paper's w)")
    p.add_argument("--n-per-class", type=_positive_int("--n-per-class"), default=500)
    p.add_argument("--steps", type=_positive_int("--steps"), default=128)
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ancestral")
    p.add_argument("--v-interp", type=_unit_float("--v-interp"), default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("toy.png"))
    _add_eval_parsers(sub)
    return parser


# -- commands ------------------------------------------------------------------------------------------


def _progress(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.1 if interactive else 30.0)


def cmd_train(args: argparse.Namespace) -> int:
    from cfgdiff.training import default_config, train

    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / args.data
    overrides = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "p_uncond": args.p_uncond,
        "logsnr_schedule": args.logsnr_schedule, "ema_decay": args.ema_decay, "warmup_steps": args.warmup_steps,
        "grad_clip": args.grad_clip, "checkpoint_every": args.checkpoint_every, "log_every": args.log_every,
        "seed": args.seed, "device": args.device,
    }
    config = default_config(args.data, **overrides)
    if args.base_channels is not None:
        config.model["base_channels"] = args.base_channels
    bar = None
    t0 = time.perf_counter()

    def on_start(trainer) -> None:
        nonlocal bar
        n_params = sum(p.numel() for p in trainer.model.parameters())
        print(f"training {trainer.model.config()['arch']} ({n_params / 1e6:.2f}M parameters) on {config.data} "
              f"(train split, {len(trainer.dataset)} examples), p_uncond={trainer.config.p_uncond}, "
              f"run dir {run_dir}", file=sys.stderr)
        bar = _progress(trainer.config.steps, "train", args.no_progress)
        bar.update(trainer.step)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    try:
        trainer = train(config, run_dir, resume=args.resume, overwrite=args.overwrite,
                        on_step=on_step, on_start=on_start)
    finally:
        if bar is not None:
            bar.close()
    print(f"done: step {trainer.step}, {time.perf_counter() - t0:.0f} s; checkpoint in {run_dir}")
    return EXIT_OK


def _resolve_weights(args: argparse.Namespace, default: Sequence[float]) -> list[float]:
    if getattr(args, "guidance_scale", None) is not None:
        return [s - 1.0 for s in args.guidance_scale]
    return list(args.w) if args.w is not None else list(default)


def _sampler_options(args: argparse.Namespace) -> dict:
    """Options that only some samplers take."""
    return {"v_interp": args.v_interp} if args.sampler == "ancestral" else {}


def cmd_sample(args: argparse.Namespace) -> int:
    from cfgdiff.contract import CountingEpsFn
    from cfgdiff.generate import generate_samples
    from cfgdiff.guidance import cfg, guidance_interval_sigma
    from cfgdiff.plotting import save_sample_grid, toy_guidance_figure
    from cfgdiff.toy import GaussianMixture
    from cfgdiff.training import load_model

    ws = _resolve_weights(args, [0.0, 1.0, 3.0])
    model = load_model(args.run_dir, ema=not args.raw_weights, device=args.device)
    num_classes = model.num_classes
    classes = args.classes if args.classes is not None else list(range(num_classes))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UsageError(f"--classes: label {bad[0]} outside [0, {num_classes}) for this model")
    run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    out = args.out if args.out is not None else run_dir / "samples" / "grid.png"
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png path, got {out}")
    is_image = len(model.data_shape) == 3
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(args.n_per_class)
    extra = {"autocast": args.autocast, "channels_last": args.channels_last, "compile_network": args.compile}
    if args.grid is not None:
        extra["grid"] = args.grid
    if args.eta is not None:
        if args.sampler != "dpmpp_2m_sde" or args.eta < 0:
            raise UsageError("--eta takes a number >= 0 and only goes with --sampler dpmpp_2m_sde")
        extra["eta"] = args.eta
    if args.interval is not None and not (len(args.interval) == 2 and 0 <= args.interval[0] < args.interval[1]):
        raise UsageError("--interval takes SIGMA_LO,SIGMA_HI with 0 <= SIGMA_LO < SIGMA_HI")
    counters: list[CountingEpsFn] = []

    def counted_cfg(network, weight):  # counts network calls (NFE) under the guidance wrapper
        counters.append(CountingEpsFn(network))
        if args.interval is not None:
            weight = guidance_interval_sigma(weight, sigma_lo=args.interval[0], sigma_hi=args.interval[1])
        return cfg(counters[-1], weight)

    samples: dict[float, torch.Tensor] = {}
    bar = _progress(len(ws) * labels.shape[0], f"sample ({args.sampler}, {args.steps} steps)", args.no_progress)
    t0 = time.perf_counter()
    with bar:
        for w in ws:
            samples[w] = generate_samples(
                model, labels, w=w, sampler=args.sampler, steps=args.steps, batch_size=args.batch_size,
                seed=args.seed, device=args.device, on_chunk=bar.update,  # same noise in every w panel
                clip_x=False if args.no_clip else model.x_bound, guide=counted_cfg, **extra,
                **_sampler_options(args),
            )
    seconds = time.perf_counter() - t0
    nfe = sum(c.rows for c in counters) / (len(ws) * labels.shape[0])  # a guided step counts 2
    out.parent.mkdir(parents=True, exist_ok=True)
    names = getattr(model, "class_names", ()) or tuple(str(c) for c in range(num_classes))
    if is_image:
        grid = {w: x.reshape(len(classes), args.n_per_class, *model.data_shape).numpy() for w, x in samples.items()}
        save_sample_grid(grid, out, class_names=[names[c] for c in classes])
    else:
        toy_guidance_figure(GaussianMixture.three_gaussians(), ws,
                            {w: (x.numpy(), labels.numpy()) for w, x in samples.items()}, out)
    npz = out.with_suffix(".npz")
    np.savez_compressed(npz, samples=np.stack([samples[w].numpy() for w in ws]), labels=labels.numpy(),
                        w=np.array(ws), sampler=args.sampler, steps=args.steps, seed=args.seed)
    print(f"wrote {out} and {npz} ({len(ws)} weights x {labels.shape[0]} samples, {seconds:.1f} s, "
          f"{nfe:g} network evaluations per sample)")
    return EXIT_OK


def cmd_toy(args: argparse.Namespace) -> int:
    from cfgdiff.generate import generate_samples
    from cfgdiff.plotting import toy_guidance_figure
    from cfgdiff.toy import GaussianMixture

    if args.out.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png path, got {args.out}")
    mixture = GaussianMixture.three_gaussians()
    labels = torch.arange(mixture.num_classes).repeat_interleave(args.n_per_class)
    samples = {}
    for w in args.w:
        x = generate_samples(mixture, labels, w=w, sampler=args.sampler, steps=args.steps,
                             batch_size=labels.shape[0], seed=args.seed, dtype=torch.float64,
                             **_sampler_options(args))
        samples[w] = (x.numpy(), labels.numpy())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    toy_guidance_figure(mixture, args.w, samples, args.out)
    print(f"wrote {args.out} (w = {', '.join(f'{w:g}' for w in args.w)})")
    return EXIT_OK


# -- evaluation and the classifier-guidance baseline (issue 3) -------------------------------------------


def _add_eval_parsers(sub) -> None:
    from cfgdiff.data import DATASETS

    p = sub.add_parser("eval", help="FID and IS across guidance weights: table, trade-off plots, sample grids")
    p.add_argument("run_dir", type=Path, help="run directory of a trained diffusion model")
    p.add_argument("--w", type=_float_list, default=[0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0],
                   help="guidance weights in the paper's convention (default 0,0.1,0.2,0.3,0.5,1,2,4)")
    p.add_argument("--n", type=int, default=2000, help="samples per w, class-balanced (default 2000)")
    p.add_argument("--steps", type=_positive_int("--steps"), default=128)
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ancestral")
    p.add_argument("--v-interp", type=_unit_float("--v-interp"), default=0.3, help="the paper's v (ancestral only)")
    p.add_argument("--guidance", default="cfg",
                   help="cfg: (1+w) eps(z,c) - w eps(z); classifier: eps(z,c) - w sigma grad log p_phi(c|z)")
    p.add_argument("--classifier", type=Path, default=None, help="noisy-classifier run dir (--guidance classifier)")
    p.add_argument("--inception-weights", type=Path, default=None,
                   help="FID Inception-v3 weights file (needs the 'inception' extra); default: the data set's "
                        "own feature classifier (digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=250, help="rows per sampling chunk")
    p.add_argument("--grid-per-class", type=_positive_int("--grid-per-class"), default=8)
    p.add_argument("--no-clip", action="store_true", help="do not clip x̂ to the data range")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", type=_device, default="cpu")
    p.add_argument("--out", type=Path, default=None, help="output dir (default RUN_DIR/eval/GUIDANCE-SAMPLER-TSTEPS)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train-classifier", help="train the noisy classifier p_phi(c | z_lambda) of classifier guidance")
    p.add_argument("--data", choices=sorted(k for k in DATASETS if k != "gmm2d"), default="digits")
    p.add_argument("--run-dir", type=Path, default=None, help="run directory (default runs/DATA-classifier)")
    p.add_argument("--steps", type=_positive_int("--steps"), default=2000)
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--base-channels", type=_positive_int("--base-channels"), default=16)
    p.add_argument("--logsnr-schedule", choices=("cosine", "uniform"), default="cosine",
                   help="training λ distribution (use the diffusion run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _eval_command_line(args: argparse.Namespace) -> str:
    parts = ["cfgdiff eval", str(args.run_dir), "--w", ",".join(f"{w:g}" for w in args.w), "--n", str(args.n),
             "--steps", str(args.steps), "--sampler", args.sampler, "--seed", str(args.seed),
             "--batch-size", str(args.batch_size), "--guidance", args.guidance]
    if args.sampler == "ancestral":
        parts += ["--v-interp", f"{args.v_interp:g}"]
    if args.classifier is not None:
        parts += ["--classifier", str(args.classifier)]
    if args.inception_weights is not None:
        parts += ["--inception-weights", str(args.inception_weights)]
    if args.no_clip:
        parts.append("--no-clip")
    return " ".join(parts)


def cmd_eval(args: argparse.Namespace) -> int:
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
    extractor = feature_extractor_for(data, args.inception_weights)
    reference = reference_statistics(data, "train", extractor)
    floor = fid_floor(data, extractor)
    out = args.out if args.out is not None else (
        args.run_dir / "eval" / f"{args.guidance}-{args.sampler}-T{args.steps}")
    sampler_kwargs = {"v_interp": args.v_interp} if args.sampler == "ancestral" else {}
    total = len(args.w) * args.n
    bar = _progress(total, f"eval ({args.guidance}, {args.sampler}, {args.steps} steps)", args.no_progress)
    t0 = time.perf_counter()
    with bar:
        result = run_sweep(model, args.w, n=args.n, steps=args.steps, extractor=extractor, reference=reference,
                           sampler=args.sampler, seed=args.seed, batch_size=args.batch_size,
                           guidance=args.guidance, log_prob_fn=log_prob_fn, grid_per_class=args.grid_per_class,
                           device=args.device, on_chunk=bar.update,
                           clip_x=False if args.no_clip else model.x_bound, **sampler_kwargs)
    seconds = time.perf_counter() - t0
    result.meta.update({"fid_floor": floor, "floor_count": len(load_dataset(data, "test")),
                        "seconds": seconds, "command": _eval_command_line(args), "run_dir": str(args.run_dir),
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
    print(f"wrote {paths['csv']}, {paths['md'].name}, {paths['tradeoff'].name}, {paths['vs_w'].name} and "
          f"{len(result.grids)} grids in {out / 'grids'} ({seconds:.0f} s)")
    return EXIT_OK


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from cfgdiff.classifier import ClassifierConfig, describe, train_classifier

    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / f"{args.data}-classifier"
    config = ClassifierConfig(data=args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              base_channels=args.base_channels, logsnr_schedule=args.logsnr_schedule, seed=args.seed)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other")
    bar = _progress(args.steps, "train-classifier", args.no_progress)
    t0 = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        bar.update(step - bar.n)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    with bar:
        _, meta = train_classifier(config, run_dir, resume=args.resume, overwrite=args.overwrite, on_step=on_step)
    print(f"done: {describe(meta)}; {time.perf_counter() - t0:.0f} s; checkpoint in {run_dir}")
    return EXIT_OK


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "toy": cmd_toy, "eval": cmd_eval,
            "train-classifier": cmd_train_classifier}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cfgdiff`` console script and ``python -m cfgdiff``."""
    from cfgdiff.training import RunDirError, TrainingDiverged

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, RunDirError, CheckpointError) as err:
        print(f"cfgdiff: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:  # invalid values caught by the library's own checks
        if os.environ.get("CFGDIFF_DEBUG"):
            raise
        print(f"cfgdiff: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as err:
        print(f"cfgdiff: training stopped: {err}; the last good checkpoint is kept", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("cfgdiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
