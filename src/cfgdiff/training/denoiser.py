"""The diffusion model's training run (Ho & Salimans 2022, Algorithm 1) and ``load_model``.

``train(config, run_dir)`` = load the data, build the network of ``config.model``, and ``fit`` a ``Trainer``
with the loss of ``config.objective`` in the run directory: ``DiffusionLoss`` (cfg: label dropout to ∅ = K,
λ ~ p(λ), z = α x + σ ε, ε-MSE) or ``GuidanceFreeLoss`` (gft: the network takes w and learns the guided ε itself;
sample it through ``cfgdiff.training.guidance_free.load_guidance_free``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from cfgdiff.data import Dataset, load_dataset
from cfgdiff.models import build_model
from cfgdiff.runtime.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from cfgdiff.runtime.distributed import DistContext
from cfgdiff.training.budget import TimeBudget
from cfgdiff.training.config import RESUME_FIXED, TrainConfig, data_spec_of
from cfgdiff.training.guidance_free import GFT, GFT_PAPER, GUIDANCE_FREE_KEY, OBJECTIVE_KEY
from cfgdiff.training.loop import RunPlan, StepHook, train_or_resume
from cfgdiff.training.losses import DiffusionLoss, GuidanceFreeLoss, LossFn
from cfgdiff.training.rundir import CHECKPOINT_FILE, DIFFUSION_LAYOUT
from cfgdiff.training.trainer import Trainer

DIFFUSION_KIND = "diffusion"


def make_model(config: TrainConfig, dataset: Dataset) -> torch.nn.Module:
    """Build the architecture of ``config.model`` for the data set's shape and class count."""
    arch_config = dict(config.model)
    if arch_config.get("arch", "unet") == "unet":
        arch_config.setdefault("image_shape", list(dataset.data_shape))
    else:
        arch_config.setdefault("dim", int(dataset.data_shape[0]))
    arch_config["num_classes"] = dataset.num_classes
    if config.objective == GFT:  # the sampling model ε_θ(z, λ, c, w) takes the guidance weight
        arch_config["w_embedding"] = True
    return build_model(arch_config)


def diffusion_loss(config: TrainConfig, num_classes: int) -> LossFn:
    """The loss of ``config.objective``: Algorithm 1's ``DiffusionLoss`` (cfg) or ``GuidanceFreeLoss`` (gft)."""
    common = dict(num_classes=num_classes, p_uncond=config.p_uncond, logsnr_schedule=config.logsnr_schedule,
                  logsnr_min=config.logsnr_min, logsnr_max=config.logsnr_max)
    if config.objective == GFT:
        return GuidanceFreeLoss(w_max=config.gft_w_max, **common)
    return DiffusionLoss(**common)


def diffusion_trainer(config: TrainConfig, dataset: Dataset, *, dist: DistContext | None = None) -> Trainer:
    """A ``Trainer`` of the class-conditional denoiser ε_θ(z, λ, c) with Algorithm 1's loss, or of the guidance-free
    sampling model ε_θ(z, λ, c, w) with GFT's (``config.objective``)."""
    config.validate()
    loss = diffusion_loss(config, dataset.num_classes)
    trainer = Trainer(lambda: make_model(config, dataset), loss, dataset, config, config=config, dist=dist)
    trainer.metadata_extra.update({
        "kind": DIFFUSION_KIND,
        "model_config": trainer.model.config(),
        "data": dataset.name,
        "data_spec": data_spec_of(config).to_json(),
        "data_shape": list(dataset.data_shape),
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.class_names),
        "x_bound": dataset.x_bound,
        OBJECTIVE_KEY: config.objective,
    })
    if config.objective == GFT:
        trainer.metadata_extra[GUIDANCE_FREE_KEY] = {"w_range": [0.0, float(config.gft_w_max)], "paper": GFT_PAPER}
    return trainer


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resume_changes: dict[str, Any] | None = None,
    on_step: StepHook | None = None,
    on_start: Callable[[Trainer], None] | None = None,
    handle_signals: bool = True,
    time_budget: TimeBudget | None = None,
) -> Trainer:
    """Train (or continue) a diffusion run in ``run_dir``; returns the Trainer at the end.

    On resume the stored config (the latest checkpoint's) is used with ``resume_changes`` (the options the
    user asked for explicitly; see ``resume_config`` for which may change) applied on top; without
    ``resume_changes``, ``config``'s ``steps`` and ``device``. Everything is checked before anything is
    written. Under torchrun (WORLD_SIZE > 1) this process joins the group and trains its shard.
    ``on_step(step, loss)`` is called after every step on rank 0 (the CLI draws its progress bar with it);
    ``trainer.interrupted`` names the signal when SIGINT/SIGTERM stopped the run (after a checkpoint).
    """

    def plan(config: TrainConfig) -> RunPlan:
        dataset = load_dataset(data_spec_of(config), "train")
        if config.hflip is None:
            config.hflip = bool(getattr(dataset, "hflip_default", False) and dataset.is_image)
        return RunPlan(lambda dist: diffusion_trainer(config, dataset, dist=dist))

    return train_or_resume(config, run_dir, plan=plan, layout=DIFFUSION_LAYOUT, fixed=RESUME_FIXED, resume=resume,
                           overwrite=overwrite, resume_changes=resume_changes, on_step=on_step, on_start=on_start,
                           handle_signals=handle_signals, time_budget=time_budget)


def load_model(
    run_dir: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The trained denoiser of a run (EMA weights by default), in eval mode, following the eps_fn contract.

    ``run_dir`` may also be a checkpoint file (the latest, or one of ``checkpoint-step-*.safetensors``).
    The module has ``num_classes``, ``data_shape``, ``class_names`` and ``x_bound`` (the data's range, the
    samplers' clip of x̂). Reads checkpoint formats 1 and 2.
    """
    path = resolve_checkpoint(run_dir, CHECKPOINT_FILE)
    groups, meta = load_checkpoint(path)
    if "model_config" not in meta:
        raise CheckpointError(f"{path} has no model config in its metadata")
    model = build_model(meta["model_config"])
    weights = groups["ema"] if ema and groups["ema"] else groups["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the stored architecture ({err})") from None
    model.class_names = tuple(meta.get("class_names", ()))
    model.x_bound = float(meta.get("x_bound", 1.0))
    model.train_step = int(meta.get("step", 0))
    return model.to(device).eval().requires_grad_(False)
