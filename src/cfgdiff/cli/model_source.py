"""Where ``cfgdiff sample`` and ``cfgdiff eval`` get their model: a cfgdiff run directory or a diffusers pipeline.

``add_model_source_options(p)`` adds the positional RUN_DIR (now optional), ``--diffusers DIR``,
``--diffusers-scheduler DIR_OR_CLASS`` and ``--null-label N`` (and, for eval, ``--data``);
``load_model_source(args, ...)`` returns a ``ModelSource``: the eps_fn and what the commands need around it
(class count and names, the sampler's data shape and the images' shape, the clipping bound, the trained log-SNR
range that the samplers' grids are clipped to, a ``decode`` for latent models, the data set for FID, a folder for
default outputs).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cfgdiff.cli.arguments import UsageError, nonnegative_int


def class_list(text: str) -> list[str]:
    """Comma-separated class indices or names, e.g. ``0,3`` or ``goldfish,tabby``."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise argparse.ArgumentTypeError("expected at least one class index or name")
    return tokens


def add_model_source_options(p: argparse.ArgumentParser, *, data_option: bool = False) -> None:
    """RUN_DIR or ``--diffusers DIR`` (one of the two), ``--null-label``; with ``data_option``, ``--data``."""
    p.add_argument("run_dir", type=Path, nargs="?", default=None,
                   help="run directory of a trained cfgdiff model (or its checkpoint.safetensors); "
                        "or give --diffusers DIR instead")
    p.add_argument("--diffusers", metavar="DIR", default=None,
                   help="a diffusers pipeline saved locally with save_pretrained (DiT, or a class-conditional "
                        "UNet2DModel), a training checkpoint folder (unet/ or transformer/, scheduler/) or a bare "
                        "model folder (unet.save_pretrained(DIR)); needs pip install 'cfgdiff[diffusers]'; nothing "
                        "is downloaded")
    p.add_argument("--diffusers-scheduler", metavar="DIR_OR_CLASS", default=None,
                   help="with --diffusers: the noise schedule, a folder holding scheduler_config.json (or a "
                        "scheduler/ sub-folder) or a diffusers scheduler class name taken with its defaults (e.g. "
                        "DDPMScheduler); default: the folder's scheduler/, else DDPMScheduler's defaults (said so)")
    p.add_argument("--null-label", type=nonnegative_int("--null-label"), default=None,
                   help="with --diffusers: the model's class id trained as the null label (default: DiT's own, "
                        "e.g. 1000 for DiT-XL/2; a UNet2DModel has none unless named here)")
    if data_option:
        p.add_argument("--data", default=None,
                       help="with --diffusers: the data set the model was trained on, for the FID reference "
                            "statistics (e.g. digits); a run directory records its own")


@dataclass
class ModelSource:
    """A model ready for the sampling commands (see the module docstring)."""

    eps_fn: Any
    kind: str  # "run" or "diffusers"
    num_classes: int
    data_shape: tuple[int, ...]  # what the sampler draws (latents for a latent model)
    image_shape: tuple[int, ...]  # what the samples look like after ``decode``
    class_names: tuple[str, ...]
    x_bound: float | None  # clip x̂ to [-b, b] (None: latents, no clipping)
    home: Path  # default folder for outputs
    description: str
    data: str = ""  # data set name for FID ("" when unknown)
    logsnr_min: float | None = None  # the trained log-SNR range (None: cfgdiff's own, the samplers' defaults)
    logsnr_max: float | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    has_null_label: bool = True
    autocast: bool = False  # bf16 autocast by default (diffusers models on CUDA)
    meta: dict[str, Any] = field(default_factory=dict)  # a run's checkpoint metadata
    command_args: list[str] = field(default_factory=list)  # how the model was named on the command line

    @property
    def step_note(self) -> str:
        """" from step S of T" for a run (the checkpoint read), "" for other sources."""
        if self.kind != "run" or "step" not in self.meta:
            return ""
        total = (self.meta.get("train_config") or {}).get("steps")
        return f" from step {self.meta['step']}" + (f" of {total}" if total else "")

    def sampler_range(self, sampler: str) -> dict[str, float]:
        """``logsnr_min`` / ``logsnr_max`` for ``sampler``: its defaults clipped to the trained range."""
        if self.logsnr_min is None or self.logsnr_max is None:
            return {}
        from cfgdiff.sampling.solvers import SAMPLERS

        params = inspect.signature(SAMPLERS[sampler]).parameters
        lo = max(self.logsnr_min, float(params["logsnr_min"].default))
        hi = min(self.logsnr_max, float(params["logsnr_max"].default))
        if not lo < hi:
            lo, hi = self.logsnr_min, self.logsnr_max
        return {"logsnr_min": lo, "logsnr_max": hi}

    def sampler_options(self, sampler: str) -> dict[str, Any]:
        """Keyword arguments for ``generate.iter_samples``: the clipped range, ``decode``, bf16 autocast."""
        options: dict[str, Any] = dict(self.sampler_range(sampler))
        if self.decode is not None:
            options["decode"] = self.decode
        if self.autocast:
            options["autocast"] = True
        return options

    def check_guidance(self, ws: Sequence[float], method: str | None = "cfg") -> None:
        """Refuse classifier-free guidance (any w != 0) for a model that has no null label."""
        from cfgdiff.guidance import uses_null_label

        if self.has_null_label or not uses_null_label(method or "cfg") or all(float(w) == 0.0 for w in ws):
            return
        raise UsageError(f"{self.description} has no null (unconditional) class, so it cannot be guided with "
                         f"--guidance {method or 'cfg'}: use --w 0, or --null-label N if class embedding N was "
                         "trained as the null label")

    def require_data(self) -> str:
        """The data set for FID, or a one-line error saying how to name it."""
        if not self.data:
            raise UsageError("eval --diffusers needs --data NAME: the data set the model was trained on, for the "
                             "FID reference statistics (e.g. digits)")
        return self.data

    def class_indices(self, tokens: Sequence[str | int] | None) -> list[int]:
        """cfgdiff class indices of ``--classes`` tokens (indices or names); all classes when None."""
        if tokens is None:
            return list(range(self.num_classes))
        aliases: dict[str, int] = {}
        for i, name in enumerate(self.class_names):
            aliases.setdefault(str(name).strip().lower(), i)
        for name, i in (getattr(self.eps_fn, "class_aliases", None) or {}).items():
            aliases.setdefault(name, i)
        out = []
        for token in tokens:
            text = str(token).strip()
            try:
                index = int(text)
            except ValueError:
                if text.lower() not in aliases:
                    examples = ", ".join(repr(n) for n in self.class_names[:3])
                    raise UsageError(f"--classes: no class named {text!r} in this model (class names: {examples}, "
                                     "...)") from None
                index = aliases[text.lower()]
            if not 0 <= index < self.num_classes:
                raise UsageError(f"--classes: label {index} outside [0, {self.num_classes}) for this model")
            out.append(index)
        return out


def _check_choice(args: argparse.Namespace) -> None:
    run_dir, diffusers = getattr(args, "run_dir", None), getattr(args, "diffusers", None)
    if run_dir is not None and diffusers is not None:
        raise UsageError("give either a run directory or --diffusers DIR, not both")
    if run_dir is None and diffusers is None:
        raise UsageError("give a run directory (RUN_DIR) or --diffusers DIR")
    if diffusers is None and getattr(args, "diffusers_scheduler", None) is not None:
        raise UsageError("--diffusers-scheduler goes with --diffusers (a cfgdiff run records its schedule)")
    if diffusers is None and getattr(args, "null_label", None) is not None:
        raise UsageError("--null-label goes with --diffusers (a cfgdiff run's null label is its class count)")
    if diffusers is None and getattr(args, "data", None) is not None:
        raise UsageError("--data goes with --diffusers (a cfgdiff run records its data set)")


def load_model_source(args: argparse.Namespace, *, ema: bool = True, device: str = "cpu") -> ModelSource:
    """The model named by ``args`` (RUN_DIR or ``--diffusers DIR``) on ``device``; one-line errors for bad input."""
    _check_choice(args)
    if args.diffusers is not None:
        return _load_diffusers_source(args, device)
    from cfgdiff.runtime.checkpoint import read_metadata
    from cfgdiff.training import CHECKPOINT_FILE, load_model

    model = load_model(args.run_dir, ema=ema, device=device)
    run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    ckpt = args.run_dir / CHECKPOINT_FILE if args.run_dir.is_dir() else args.run_dir
    meta = read_metadata(ckpt)
    from cfgdiff.training.rundir import lock_holder

    pid = lock_holder(run_dir)
    if pid:  # a live run: its latest checkpoint was read (checkpoints are written atomically, so whole)
        total = (meta.get("train_config") or {}).get("steps")
        print(f"cfgdiff: note: {run_dir} is being trained now by process {pid if pid > 0 else '(unknown)'}; "
              f"using its checkpoint at step {meta.get('step', 0)}{f' of {total}' if total else ''}",
              file=sys.stderr)
    names = tuple(getattr(model, "class_names", ()) or ()) or tuple(str(c) for c in range(model.num_classes))
    return ModelSource(
        eps_fn=model, kind="run", num_classes=int(model.num_classes), data_shape=tuple(model.data_shape),
        image_shape=tuple(model.data_shape), class_names=names, x_bound=getattr(model, "x_bound", 1.0),
        home=run_dir, description=f"run {args.run_dir}", data=str(meta.get("data", "") or ""), meta=meta,
        command_args=[str(args.run_dir)],
    )


def _load_diffusers_source(args: argparse.Namespace, device: str) -> ModelSource:
    from cfgdiff.adapters.diffusers import load_diffusers

    scheduler = getattr(args, "diffusers_scheduler", None)
    loaded = load_diffusers(args.diffusers, null_label=args.null_label, scheduler=scheduler, device=device)
    for note in loaded.notes:  # what was assumed (a default noise schedule), one line each
        print(f"cfgdiff: note: {note}", file=sys.stderr)
    eps_fn = loaded.eps_fn
    autocast = torch.device(device).type == "cuda"
    decode = partial(loaded.decode, autocast=autocast) if loaded.is_latent else None
    model_name = type(eps_fn.model).__name__
    kind = "latent " if loaded.is_latent else ""
    description = (f"diffusers {kind}{model_name} at {args.diffusers} ({eps_fn.prediction_type} prediction, "
                   f"{eps_fn.schedule.num_timesteps} timesteps, log-SNR [{eps_fn.logsnr_min:.2f}, "
                   f"{eps_fn.logsnr_max:.2f}])")
    command_args = ["--diffusers", str(args.diffusers)]
    if scheduler is not None:
        command_args += ["--diffusers-scheduler", str(scheduler)]
    if args.null_label is not None:
        command_args += ["--null-label", str(args.null_label)]
    data = getattr(args, "data", None) or ""
    if data:
        command_args += ["--data", data]
        _check_data_shape(data, loaded.image_shape)
    return ModelSource(
        eps_fn=eps_fn, kind="diffusers", num_classes=eps_fn.num_classes, data_shape=tuple(eps_fn.data_shape),
        image_shape=tuple(loaded.image_shape), class_names=tuple(eps_fn.class_names), x_bound=eps_fn.x_bound,
        home=Path(args.diffusers), description=description, data=data, logsnr_min=eps_fn.logsnr_min,
        logsnr_max=eps_fn.logsnr_max, decode=decode, has_null_label=eps_fn.has_null_label, autocast=autocast,
        command_args=command_args,
    )


def _check_data_shape(data: str, image_shape: tuple[int, ...]) -> None:
    """The data set named for FID must hold images of the shape the model makes."""
    from cfgdiff.data import load_dataset

    dataset = load_dataset(data, "test")
    shape = tuple(dataset.stored.shape[1:])
    if shape != tuple(image_shape):
        raise UsageError(f"--data {data} holds samples of shape {shape}, the model makes {tuple(image_shape)}")
