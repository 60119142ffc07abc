"""Training with label dropout (Ho & Salimans 2022, Algorithm 1), run directories, and ``load_model``.

One step, for a batch (x, c):

    c ← ∅ (= K) with probability p_uncond          # one network learns ε(z, c) and ε(z) = ε(z, ∅)
    λ ~ p(λ) (cosine map of u ~ U(0, 1), or uniform)
    ε ~ N(0, I),  z_λ = α_λ x + σ_λ ε
    loss = ||ε_θ(z_λ, λ, c) - ε||²

with AdamW, linear learning-rate warm-up, gradient-norm clipping, and EMA weights (used for sampling).

A run directory holds ``config.json`` (the resolved ``TrainConfig``), ``loss.jsonl`` (one JSON object per log
interval) and ``checkpoint.safetensors`` (weights, EMA weights, optimizer state, generator state, metadata),
rewritten atomically. ``--resume`` restores all of it and continues the step count; all randomness comes from
one ``torch.Generator`` whose state is checkpointed, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cfgdiff.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_tensors,
    optimizer_tensors,
    read_metadata,
    resolve_checkpoint,
    save_checkpoint,
)
from cfgdiff.data import Dataset, load_dataset
from cfgdiff.diffusion import diffuse, loss_eps_mse
from cfgdiff.models import build_model
from cfgdiff.schedule import LOGSNR_MAX, LOGSNR_MIN, sample_logsnr

CONFIG_FILE = "config.json"
LOSS_FILE = "loss.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (holds another run, or holds none to resume)."""


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint was left as it was."""


@dataclass
class TrainConfig:
    """Every knob of a training run; written resolved to ``config.json``."""

    data: str = "digits"  # data source: a built-in name (cfgdiff.data.DATASETS) or a path
    data_spec: dict[str, Any] | None = None  # the full cfgdiff.data.DataSpec as JSON (None: DataSpec(data))
    steps: int = 4000  # total optimizer steps
    batch_size: int = 128
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.0
    warmup_steps: int = 200  # linear warm-up of the learning rate
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    ema_decay: float = 0.999  # EMA of the weights, with warm-up min(decay, (1+t)/(10+t))
    p_uncond: float = 0.1  # label dropout probability (the paper's best)
    logsnr_schedule: str = "cosine"  # "cosine" (the paper's) or "uniform"
    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX
    seed: int = 0
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    log_every: int = 50  # steps between loss-log lines
    device: str = "cpu"
    model: dict[str, Any] = field(default_factory=dict)  # architecture config, see cfgdiff.models

    def validate(self) -> None:
        """Raise ValueError for values no run can use."""
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {self.p_uncond}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.logsnr_schedule not in ("cosine", "uniform"):
            raise ValueError(f"unknown logsnr schedule {self.logsnr_schedule!r}; choose cosine or uniform")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError("need logsnr_min < logsnr_max")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Per-data-set defaults: chosen so the digits run gives recognisable digits in about 10 minutes on 2 cores.
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {
        "steps": 4000,
        "batch_size": 128,
        "lr": 2e-3,
        "model": {"arch": "unet", "base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1},
    },
    "gmm2d": {
        "steps": 3000,
        "batch_size": 512,
        "lr": 1e-3,
        "warmup_steps": 100,
        "ema_decay": 0.995,
        "checkpoint_every": 1000,
        "model": {"arch": "mlp", "hidden": 128, "depth": 3},
    },
}


# Defaults for data sets given as a path, by image shape (C, H, W). Sized for the 2-core CPU: the 28x28 U-Net
# (0.72M parameters, widths 16/32/64 at 28/14/7) takes about 0.43 s per step at batch 64 on one thread.
SHAPE_DEFAULTS: dict[tuple[int, ...], dict[str, Any]] = {
    (1, 28, 28): {
        "steps": 10000,
        "batch_size": 64,
        "lr": 1e-3,
        "warmup_steps": 500,
        "model": {"arch": "unet", "base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1},
    },
}


def data_spec_of(config: TrainConfig):
    """The ``cfgdiff.data.DataSpec`` a config trains on."""
    from cfgdiff.data import DataSpec

    return DataSpec.from_json(config.data_spec) if config.data_spec else DataSpec(source=config.data)


def default_config(data: str, *, data_shape: tuple[int, ...] | None = None, **overrides: Any) -> TrainConfig:
    """The defaults for a data set (by name, or by ``data_shape`` for a path), with ``overrides`` (None values
    ignored) on top."""
    if data in DATA_DEFAULTS:
        defaults = DATA_DEFAULTS[data]
    elif data_shape is not None and tuple(data_shape) in SHAPE_DEFAULTS:
        defaults = SHAPE_DEFAULTS[tuple(data_shape)]
    elif data_shape is not None:
        defaults = {"model": {"arch": "unet"}}
    else:
        raise ValueError(f"unknown data set {data!r}; choose from {', '.join(sorted(DATA_DEFAULTS))} or a path")
    values: dict[str, Any] = {"data": data, **json.loads(json.dumps(defaults))}
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig(**values)
    config.validate()
    return config


def make_model(config: TrainConfig, dataset: Dataset) -> torch.nn.Module:
    """Build the architecture of ``config.model`` for the data set's shape and class count."""
    arch_config = dict(config.model)
    if arch_config.get("arch", "unet") == "unet":
        arch_config.setdefault("image_shape", list(dataset.data_shape))
    else:
        arch_config.setdefault("dim", int(dataset.data_shape[0]))
    arch_config["num_classes"] = dataset.num_classes
    return build_model(arch_config)


def drop_labels(labels: torch.Tensor, p_uncond: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label K with probability p_uncond (Algorithm 1)."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def _lr_at(step: int, config: TrainConfig) -> float:
    if config.warmup_steps == 0:
        return config.lr
    return config.lr * min(1.0, (step + 1) / config.warmup_steps)


class Trainer:
    """Holds a run's state (model, EMA, optimizer, generator, step) and advances it one step at a time.

    The loop is split into ``train_step`` (one optimizer step) and ``save``/``restore`` so that a
    distributed wrapper or a fault-tolerant driver can reuse it unchanged.
    """

    def __init__(self, config: TrainConfig, dataset: Dataset) -> None:
        config.validate()
        self.config = config
        self.dataset = dataset
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)  # weight init
        self.model = make_model(config, dataset).to(self.device)
        self.ema = make_model(config, dataset).to(self.device)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99)
        )
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.x = dataset.x.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.step = 0
        self._order = torch.empty(0, dtype=torch.long, device=self.device)
        self._cursor = 0

    # -- one step -------------------------------------------------------------------------------------------

    def _next_indices(self) -> torch.Tensor:
        """Sample without replacement within an epoch (a fresh permutation per epoch, from the generator)."""
        batch = self.config.batch_size
        idx = []
        need = batch
        while need > 0:
            if self._cursor >= self._order.numel():
                self._order = torch.randperm(len(self.dataset), generator=self.generator, device=self.device)
                self._cursor = 0
            take = self._order[self._cursor:self._cursor + need]
            self._cursor += take.numel()
            need -= take.numel()
            idx.append(take)
        return torch.cat(idx)

    def loss_on_batch(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Algorithm 1's loss on one batch: label dropout, λ ~ p(λ), z_λ = α x + σ ε, ε-MSE."""
        config = self.config
        labels = drop_labels(labels, config.p_uncond, self.dataset.num_classes, self.generator)
        logsnr = sample_logsnr(
            x.shape[0], config.logsnr_schedule, logsnr_min=config.logsnr_min, logsnr_max=config.logsnr_max,
            generator=self.generator, device=self.device,
        )
        eps = torch.randn(x.shape, generator=self.generator, device=self.device, dtype=x.dtype)
        z = diffuse(x=x, eps=eps, logsnr=logsnr)
        return loss_eps_mse(self.model(z, logsnr, labels), eps)

    def train_step(self) -> float:
        """One optimizer step; returns the loss. Raises ``TrainingDiverged`` before touching the weights
        if the loss or the gradient norm is not finite."""
        idx = self._next_indices()
        self.model.train()
        loss = self.loss_on_batch(self.x[idx], self.labels[idx])
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"loss is {loss_value} at step {self.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"gradient norm is {grad_norm} at step {self.step + 1}")
        for group in self.optimizer.param_groups:
            group["lr"] = _lr_at(self.step, self.config)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return loss_value

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        ema_params = list(self.ema.parameters())
        params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buf, buf in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            ema_buf.copy_(buf)

    # -- checkpoints ---------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model_config": self.model.config(),
            "data": self.dataset.name,
            "data_spec": data_spec_of(self.config).to_json(),
            "data_shape": list(self.dataset.data_shape),
            "num_classes": self.dataset.num_classes,
            "class_names": list(self.dataset.class_names),
            "x_bound": self.dataset.x_bound,
            "train_config": self.config.to_json(),
            "data_cursor": self._cursor,
        }

    def save(self, path: str | os.PathLike) -> None:
        save_checkpoint(
            path,
            model=self.model.state_dict(),
            ema=self.ema.state_dict(),
            optim=optimizer_tensors(self.optimizer),
            rng={"generator": self.generator.get_state(), "data_order": self._order.to("cpu")},
            metadata=self.metadata(),
        )

    def restore(self, path: str | os.PathLike) -> None:
        groups, meta = load_checkpoint(path)
        self.model.load_state_dict(groups["model"])
        self.ema.load_state_dict(groups["ema"] or groups["model"])
        if groups["optim"]:
            load_optimizer_tensors(self.optimizer, {k: v.to(self.device) for k, v in groups["optim"].items()})
        if "generator" in groups["rng"]:
            self.generator.set_state(groups["rng"]["generator"])
        self._order = groups["rng"].get("data_order", torch.empty(0, dtype=torch.long)).to(self.device)
        self._cursor = int(meta.get("data_cursor", 0))
        self.step = int(meta["step"])


# -- run directories ---------------------------------------------------------------------------------------


def prepare_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Check a run directory before anything is written to it.

    A directory that already holds a run (a config or checkpoint) is refused unless ``resume`` (continue it)
    or ``overwrite`` (its run files are removed). ``resume`` needs a run to continue.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory")
    holds_run = any((run_dir / name).exists() for name in (CONFIG_FILE, CHECKPOINT_FILE))
    if resume:
        if overwrite:
            raise RunDirError("--resume and --overwrite contradict each other")
        if not (run_dir / CHECKPOINT_FILE).exists():
            raise RunDirError(f"nothing to resume: {run_dir / CHECKPOINT_FILE} does not exist")
        read_metadata(run_dir / CHECKPOINT_FILE)  # fail early on a foreign or broken file
        return run_dir
    if holds_run and not overwrite:
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if holds_run and overwrite:
        for name in (CONFIG_FILE, LOSS_FILE, CHECKPOINT_FILE):
            (run_dir / name).unlink(missing_ok=True)
        for extra in ("samples",):
            shutil.rmtree(run_dir / extra, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


StepHook = Callable[[int, float], None]


def _truncate_loss_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint's step (written after the last checkpoint of an interrupted run)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    # (event lines such as {"event": "resume", ...} carry a step too and are kept or dropped the same way)
    path.write_text("".join(line + "\n" for line in kept))


# What ``--resume`` may change. A resumed run continues the same experiment: flags that only steer the
# optimisation or the bookkeeping may change (and the change is recorded in config.json and loss.jsonl); flags
# that define what is learned (data, label dropout, λ distribution, architecture, seed) may not.
RESUME_MAY_CHANGE = frozenset({"steps", "device", "lr", "batch_size", "warmup_steps", "grad_clip", "ema_decay",
                               "weight_decay", "checkpoint_every", "log_every"})
RESUME_FIXED = frozenset({"data", "p_uncond", "logsnr_schedule", "logsnr_min", "logsnr_max", "seed", "model"})


def resume_config(stored: TrainConfig, changes: dict[str, Any], *, step: int) -> tuple[TrainConfig, dict[str, Any]]:
    """The config of a resumed run: ``stored`` with the explicitly asked ``changes`` applied.

    Returns (config, changed) where ``changed`` maps each changed field to [old, new]. Raises ``RunDirError``
    for a change of a field in ``RESUME_FIXED`` and when nothing is left to train (the total ``steps`` is not
    above the checkpoint's ``step``).
    """
    values = stored.to_json()
    changed: dict[str, Any] = {}
    for name, new in changes.items():
        if new is None or values.get(name) == new:
            continue
        if name in RESUME_FIXED:
            flag = "--" + name.replace("_", "-")
            raise RunDirError(f"{flag} cannot change on --resume (this run was trained with {values.get(name)!r}, "
                              f"asked for {new!r}); start a new run with --run-dir or --overwrite")
        if name not in RESUME_MAY_CHANGE:
            raise RunDirError(f"unknown training option {name!r}")
        changed[name] = [values.get(name), new]
        values[name] = new
    config = TrainConfig.from_json(values)
    config.validate()
    if config.steps <= step:
        raise RunDirError(f"nothing left to train: the run is at step {step} and its total is {config.steps}; "
                          f"pass --steps N with N > {step} to train further")
    return config, changed


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resume_changes: dict[str, Any] | None = None,
    on_step: StepHook | None = None,
    on_start: Callable[[Trainer], None] | None = None,
) -> Trainer:
    """Train (or continue) a run in ``run_dir``; returns the Trainer at the end.

    On resume the stored config is used with ``resume_changes`` (the options the user asked for explicitly;
    see ``resume_config`` for which may change) applied on top; without ``resume_changes``, ``config``'s
    ``steps`` and ``device``. Everything is
    checked before anything is written. ``on_step(step, loss)`` is called after every step (the CLI draws its
    progress bar with it).
    """
    run_dir = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    changed: dict[str, Any] = {}
    if resume:
        stored = TrainConfig.from_json(json.loads((run_dir / CONFIG_FILE).read_text()))
        step = int(read_metadata(run_dir / CHECKPOINT_FILE).get("step", 0))
        if resume_changes is None:  # the Python API's older form: the new total and device from ``config``
            resume_changes = {"steps": config.steps, "device": config.device}
        config, changed = resume_config(stored, dict(resume_changes), step=step)
    config.validate()
    dataset = load_dataset(data_spec_of(config), "train")
    trainer = Trainer(config, dataset)
    if resume:
        trainer.restore(run_dir / CHECKPOINT_FILE)
        _truncate_loss_log(run_dir / LOSS_FILE, trainer.step)
    (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2) + "\n")
    if on_start is not None:
        on_start(trainer)
    checkpoint = run_dir / CHECKPOINT_FILE
    running, count, t_last = 0.0, 0, time.perf_counter()
    with open(run_dir / LOSS_FILE, "a") as log:
        if resume:
            log.write(json.dumps({"event": "resume", "step": trainer.step, "changed": changed}) + "\n")
            log.flush()
        while trainer.step < config.steps:
            loss = trainer.train_step()
            running, count = running + loss, count + 1
            if on_step is not None:
                on_step(trainer.step, loss)
            if trainer.step % config.log_every == 0 or trainer.step == config.steps:
                now = time.perf_counter()
                log.write(json.dumps({
                    "step": trainer.step, "loss": running / count,
                    "lr": trainer.optimizer.param_groups[0]["lr"],
                    "steps_per_sec": count / max(now - t_last, 1e-9),
                }) + "\n")
                log.flush()
                running, count, t_last = 0.0, 0, now
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                trainer.save(checkpoint)
    return trainer


# -- loading a trained model -------------------------------------------------------------------------------


def load_model(
    run_dir: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The trained denoiser of a run (EMA weights by default), in eval mode, following the eps_fn contract.

    ``run_dir`` may also be the checkpoint file itself. The module has ``num_classes``, ``data_shape``,
    ``class_names`` and ``x_bound`` (the data's range, the samplers' clip of x̂).
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
