"""``cfgdiff sample``: a grid of samples across guidance weights from a trained run."""

from __future__ import annotations

import argparse
import time

import numpy as np
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
    resolve_weights,
)
from cfgdiff.cli.config_file import write_resolved_config
from cfgdiff.cli.guidance_options import add_guidance_options, guidance_from_args
from cfgdiff.cli.model_source import add_model_source_options, class_list, load_model_source
from cfgdiff.cli.network_options import add_network_options, network_options
from cfgdiff.cli.sampling_options import add_sampler_options, distilled_student, guided_run_from_args, interval_of
from cfgdiff.models.presets import DEFAULT_SAMPLING_CHUNK, default_chunk
from cfgdiff.sampling.generate import legacy_form

EXIT_OK = 0


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a grid across guidance weights from a trained run",
                       description="Draw samples of every class at each guidance weight w, from the same noise, "
                                   "and write one PNG panel per w plus an .npz of the samples.")
    add_model_source_options(p)
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--w", type=float_list, default=None,
                         help="guidance weights in the paper's convention, comma-separated (default 0,1,3); "
                              "eps = (1+w) eps(z,c) - w eps(z): w=0 is the conditional model")
    weights.add_argument("--guidance-scale", type=float_list, default=None,
                         help="guidance scales s = w + 1 (the diffusers / k-diffusion convention)")
    p.add_argument("--n-per-class", type=positive_int("--n-per-class"), default=8,
                   help="samples per class in each panel (default 8)")
    p.add_argument("--classes", type=class_list, default=None,
                   help="class indices or names, comma-separated (default: all)")
    add_sampler_options(p, steps=128, sampler="ancestral")
    add_guidance_options(p)
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help="rows per chunk; a guided chunk is one call of 2x rows (default by image size and device: "
                        f"on a CPU 256 up to 12x12 pixels, else {DEFAULT_SAMPLING_CHUNK}; 256 on an accelerator)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample noise streams (default 0)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    p.add_argument("--out", type=output_path("--out"), default=None, help="PNG path (default RUN_DIR/samples/grid.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_network_options(p, legacy=True)  # --precision, --memory-format, --compile (and --autocast, --channels-last)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cfgdiff.sampling.sharded import sampling_group

    with sampling_group(args.device) as (dist, args.device):  # under torchrun: its group, each rank its device
        return _sample(args, dist)


def _sample(args: argparse.Namespace, dist) -> int:
    """``run`` in one process, or as one rank of torchrun's group: the ranks split the samples of each w
    (``cfgdiff.sampling.sharded``), rank 0 gets them all, bit for bit those of one process, and alone writes
    and prints."""
    from cfgdiff.core.toy import GaussianMixture
    from cfgdiff.evaluation.plotting import save_sample_grid, toy_guidance_figure
    from cfgdiff.sampling.sharded import sum_over_ranks

    composed = args.compose is not None or args.guidance == "compose"
    ws = resolve_weights(args, [0.0] if composed else [0.0, 1.0, 3.0])  # compose: w = 0 is the weights as written
    if composed and args.classes is not None:
        raise UsageError("--classes does not go with --compose: every sample gets the composed conditions")
    source = load_model_source(args, ema=not args.raw_weights, device=args.device)  # a run or --diffusers DIR
    source.check_guidance(ws, getattr(args, "guidance", "cfg"))
    student = distilled_student(args, source, ws)  # a distilled run: student.at(w), 1 row per step; else None
    model = source.eps_fn
    if args.batch_size is None:  # the measured best chunk for this image size on this device
        args.batch_size = default_chunk(source.data_shape, args.device)
    choice = guidance_from_args(args, model, ws=[0.0] if student else ws, x_bound=source.x_bound,
                                device=args.device, ema=not args.raw_weights)  # checked before any work
    classes = source.class_indices(args.classes)
    out = args.out if args.out is not None else source.home / "samples" / "grid.png"
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png path, got {out}")
    is_image = len(source.image_shape) == 3
    if composed:  # one panel row of --n-per-class samples per w; the rows' labels are not read (the null label)
        if not is_image:
            raise UsageError("--compose draws image panels; for 2-D data use the Python API (cfgdiff.guidance.compose)")
        classes = [source.num_classes]
    n_total = len(classes) * args.n_per_class
    stream = _check_sizes(args, ws, n_total, source, is_image, out)  # before anything of that size is allocated
    if dist.is_main:
        check_writable("--out", out)  # before any sampling
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(args.n_per_class)
    interval_of(args)  # check --interval before any work
    run = guided_run_from_args(args, source, choice, student=student, network_options=network_options(args))

    # every w's samples, written chunk by chunk into one array (held once: the grid and the .npz read it); too many
    # to hold: into a .npy file on disk, chunk by chunk, and the grid shows the first GRID_CAP of each class
    kept = None
    if dist.is_main:
        shape = (len(ws), n_total, *source.image_shape)
        if stream:
            out.parent.mkdir(parents=True, exist_ok=True)
            kept = np.lib.format.open_memmap(_stream_path(out), mode="w+", dtype=np.float32, shape=shape)
        else:
            kept = np.empty(shape, dtype=np.float32)
    nfe: dict[float, float] = {}
    bar = progress(len(ws) * labels.shape[0], f"sample ({args.sampler}, {args.steps} steps)",
                   args.no_progress or not dist.is_main)
    t0 = time.perf_counter()
    with bar:
        for i, w in enumerate(ws):
            run.counter.reset()  # counts the rows of every network the guidance calls (NFE)
            filled = 0
            for x in run.iter_samples(labels, w, seed=args.seed, dist=dist):  # same noise in every w panel
                kept[i, filled:filled + x.shape[0]] = x.numpy()
                filled += x.shape[0]
                bar.update(x.shape[0])
            nfe[w] = sum_over_ranks(run.denoiser_rows(), dist) / labels.shape[0]  # a guided step counts 2 rows
    seconds = time.perf_counter() - t0
    if not dist.is_main:
        return EXIT_OK  # this rank's samples went to rank 0, which writes them
    out.parent.mkdir(parents=True, exist_ok=True)
    names = source.class_names
    per_class = min(args.n_per_class, GRID_CAP) if stream else args.n_per_class
    if stream:
        kept.flush()
    # what the figure shows of each w: the first per_class samples of every class, [K, per_class, *shape]
    shown = {w: np.asarray(kept[i].reshape(len(classes), args.n_per_class, *source.image_shape)[:, :per_class])
             for i, w in enumerate(ws)}
    if is_image:
        rows = [f"compose {args.compose}"] if composed else [names[c] for c in classes]
        save_sample_grid(shown, out, class_names=rows)
    else:
        shown_labels = np.repeat(np.asarray(classes), per_class)
        toy_guidance_figure(GaussianMixture.three_gaussians(), ws,
                            {w: (x.reshape(-1, *source.image_shape), shown_labels) for w, x in shown.items()}, out)
    form = run.form if run.form is not None else legacy_form()  # what the network ran in (auto: measured)
    npz = out.with_suffix(".npz")
    held = {"samples_file": _stream_path(out).name} if stream else {"samples": kept}  # streamed: the .npy beside it
    np.savez_compressed(npz, **held, labels=labels.numpy(),
                        w=np.array(ws), sampler=args.sampler, steps=args.steps, seed=args.seed, guidance=args.guidance,
                        nfe_per_sample=np.array([nfe[w] for w in ws]), precision=form.precision,
                        memory_format=form.memory_format, form_chosen_by=form.chosen_by, compiled=bool(args.compile))
    write_resolved_config(args, out.with_suffix(".toml"), fill={"out": out})  # `sample --config` reads it back
    guided_by = student.record().get("objective", "distilled") if student else ""  # "gft" or "distilled"
    per_w = ", ".join(f"w = {w:g}: {nfe[w]:g}" for w in ws) + (f" ({guided_by}: one row per step)" if student else "")
    streamed = (f"; the samples streamed to {_stream_path(out)} (the grid shows the first {per_class} of each "
                f"class)") if stream else ""
    print(f"wrote {out} and {npz} ({len(ws)} weights x {labels.shape[0]} samples{source.step_note}, {seconds:.1f} s)"
          f"{streamed}; "
          f"network evaluations per sample ({args.sampler}, {args.steps} steps; a guided step counts 2): {per_w}; "
          f"network in {form.name} ({form.chosen_by})" + (", compiled" if args.compile else ""))
    return EXIT_OK


ACTIVATION_FACTOR = 64  # a chunk's network activations, guessed as this many copies of its [2B, *shape] input
STREAM_SHARE = 0.5  # samples (and their figure) above this share of the available memory stream to disk
GRID_CAP = 16  # a streamed sample's grid shows at most this many per class
SCREEN_PIXELS = 48  # the grid upscales each image to at least this many pixels a side (plotting.save_sample_grid)


def read_samples(npz_path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The samples [W, N, *shape] of a ``cfgdiff sample`` .npz and its other fields: the array it holds, or, for a
    streamed sample, its ``samples_file`` beside it, memory-mapped (read as it is indexed)."""
    from pathlib import Path

    with np.load(npz_path) as data:
        fields = {k: data[k] for k in data.files}
    if "samples" in fields:
        return fields.pop("samples"), fields
    return np.load(Path(npz_path).parent / str(fields["samples_file"]), mmap_mode="r"), fields


def _stream_path(out):
    """Where a streamed sample goes: ``grid.png`` → ``grid.samples.npy`` ([W, N, *shape] float32, ``np.load``
    with ``mmap_mode="r"`` reads it without loading it)."""
    return out.with_suffix(".samples.npy")


def _check_sizes(args: argparse.Namespace, ws, n_total: int, source, is_image: bool, out) -> bool:
    """Whether the samples stream to disk; refuse (one line, exit 2) a request that cannot fit.

    In memory: the samples kept for the grid and the .npz (float32), the grid's figure (RGBA, upscaled), one
    chunk's network activations (a guess) and the labels. When the samples and figure would take more than
    STREAM_SHARE of the memory available now, they stream to ``_stream_path(out)`` chunk by chunk instead (the
    grid then shows GRID_CAP per class), and what must fit is that file on disk and the rest in memory."""
    import math
    import shutil

    from cfgdiff.cli.arguments import available_memory, format_bytes, nearest_existing_folder

    image = math.prod(source.image_shape)
    kept = len(ws) * n_total * image * 4
    figure_per_sample = 0
    if is_image:
        _, height, width = source.image_shape
        scale = max(1, math.ceil(SCREEN_PIXELS / max(1, min(height, width))))
        figure_per_sample = 2 * len(ws) * (height * scale + 1) * (width * scale + 1) * 4
    chunk = 2 * min(args.batch_size, n_total) * math.prod(source.data_shape) * 4 * ACTIVATION_FACTOR
    what = f"sampling {len(ws)} weight(s) x {n_total} samples"
    hint = "lower --n-per-class, --classes or the number of weights"
    available = available_memory()
    in_memory = kept + figure_per_sample * n_total
    stream = available is not None and in_memory > STREAM_SHARE * available
    if not stream:
        check_fits_in_memory(what, in_memory + chunk + 8 * n_total, hint=hint)
        return False
    n_grid = (n_total // max(1, args.n_per_class)) * min(args.n_per_class, GRID_CAP)
    check_fits_in_memory(what + " (streamed to disk)", figure_per_sample * n_grid + chunk + 8 * n_total, hint=hint)
    folder = nearest_existing_folder(out.parent)
    free = shutil.disk_usage(folder).free
    if kept > free:
        raise UsageError(f"{what} needs about {format_bytes(kept)} of disk for {_stream_path(out).name} (too many to "
                         f"hold in memory), {format_bytes(free)} is free in {folder}; {hint}")
    return True
