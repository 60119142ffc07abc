"""Distillation runs through the project's one ``Trainer``: stage 1 (guidance) and stage 2 (progressive).

``distill(config, run_dir)`` loads the teacher named in a ``DistillConfig``, builds the student from it (stage 1:
the teacher's architecture plus the w embedding, ``init_student``; stage 2: a copy of the w-conditioned
teacher), and ``fit``s a ``Trainer`` with the stage's loss on the teacher's own training data (its ``data_spec``)
in a run directory of the diffusion layout (``config.json``, ``loss.jsonl``, ``checkpoint.safetensors``,
``checkpoints/``): checkpoints, ``--resume``, logging, signals, distribution and precision are the Trainer's.

The checkpoint's metadata is a diffusion model's (``model_config``, ``data_spec``, ``x_bound``, ... so that
``cfgdiff.training.load_model`` reads it) plus ``distillation``:

    {"stage": "guidance" | "progressive",
     "w_range": [w_min, w_max],
     "teacher": {"run_dir": ..., "step": ..., "sha256": ..., "stage": "cfg" | "guidance" | "progressive",
                 "sampling_steps": N (progressive teachers)},
     "origin": {...the classifier-free-guided model at the root of the chain, same fields...},
     "noise_end_logsnr": -10.0 (progressive; see ``student.output_to_eps``) or None,
     "sampling": {"sampler": "ddim", "steps": N/2, "grid": "cosine", "logsnr_min": ..., "logsnr_max": ...}
                 (progressive only: what the student was distilled for),
     "weighting": "truncated_snr" (progressive)}

A resumed run checks that the teacher's checkpoint still has the recorded SHA-256.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cfgdiff.core.schedule import LOGSNR_MAX, LOGSNR_MIN
from cfgdiff.distillation.guidance import GuidanceDistillationLoss, init_student
from cfgdiff.distillation.progressive import NOISE_END_LOGSNR, WEIGHTINGS, ProgressiveDistillationLoss, check_halving
from cfgdiff.distillation.student import (
    DISTILLATION_KEY,
    STAGE_GUIDANCE,
    STAGE_PROGRESSIVE,
    WRange,
    file_sha256,
    load_student,
)
from cfgdiff.models import build_model
from cfgdiff.runtime.checkpoint import CheckpointError, read_metadata, resolve_checkpoint
from cfgdiff.training import (
    CHECKPOINT_FILE,
    DIFFUSION_KIND,
    DIFFUSION_LAYOUT,
    LoopConfig,
    RunDirError,
    RunPlan,
    Trainer,
    load_model,
    train_or_resume,
)

STAGES = (STAGE_GUIDANCE, STAGE_PROGRESSIVE)

# Loop defaults of a distillation run. The student starts from its teacher; on digits (batch 128) a learning
# rate of 1e-3 lowered the stage-1 loss faster than 2e-4 over the first 240 steps (0.032 vs 0.039), and a
# 16 -> 8 halving reached its teacher's 16-step FID within 240 steps; one step costs about 0.18 s of one CPU
# thread in either stage (two teacher passes of B rows, or one of 2B, plus the student's forward and backward).
DISTILL_DEFAULTS: dict[str, Any] = {
    "batch_size": 128,
    "lr": 1e-3,
    "warmup_steps": 100,
    "ema_decay": 0.995,  # an averaging window of ~200 steps: these runs are short
    "checkpoint_every": 500,
    "log_every": 50,
}
STAGE_STEPS = {STAGE_GUIDANCE: 4000, STAGE_PROGRESSIVE: 2000}  # default optimizer steps per stage

# What --resume may not change: everything that defines what the student learns.
DISTILL_RESUME_FIXED = frozenset({"teacher", "teacher_step", "teacher_sha256", "stage", "w_min", "w_max",
                                  "steps_from", "weighting", "data", "data_spec", "logsnr_schedule", "logsnr_min",
                                  "logsnr_max", "seed", "hflip"})


class TeacherError(ValueError):
    """A teacher run that cannot be distilled as asked (one line)."""


@dataclass
class DistillConfig(LoopConfig):
    """Every knob of a distillation run; written resolved to ``config.json``. Loop fields as ``LoopConfig``."""

    teacher: str = ""  # the teacher's run directory (absolute)
    teacher_step: int = 0  # the teacher checkpoint's step
    teacher_sha256: str = ""  # SHA-256 of the teacher's checkpoint file
    stage: str = STAGE_GUIDANCE  # "guidance" (stage 1) or "progressive" (stage 2)
    w_min: float = 0.0  # w ~ U(w_min, w_max), the paper's w
    w_max: float = 4.0
    steps_from: int | None = None  # progressive: the teacher's DDIM steps N; the student takes N/2
    weighting: str = "truncated_snr"  # progressive loss weighting (see progressive.py)
    data: str = ""  # the teacher's data (copied from its run)
    data_spec: dict[str, Any] | None = None
    logsnr_schedule: str = "cosine"  # the teacher's training λ distribution (stage 1 draws λ from it)
    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX

    @property
    def w_range(self) -> WRange:
        return WRange(self.w_min, self.w_max)

    @property
    def student_steps(self) -> int | None:
        return None if self.steps_from is None else self.steps_from // 2

    def validate(self) -> None:
        super().validate()
        if self.stage not in STAGES:
            raise ValueError(f"unknown distillation stage {self.stage!r}; choose from {', '.join(STAGES)}")
        WRange(self.w_min, self.w_max)  # raises WRangeError for an empty or reversed range
        if self.stage == STAGE_PROGRESSIVE:
            if self.steps_from is None:
                raise ValueError("progressive distillation needs the teacher's steps (--steps-from N)")
            check_halving(self.steps_from)
            if self.weighting not in WEIGHTINGS:
                raise ValueError(f"unknown weighting {self.weighting!r}; choose from {', '.join(WEIGHTINGS)}")
        if not self.teacher:
            raise ValueError("a distillation config needs its teacher's run directory")


def teacher_record(teacher_dir: str | os.PathLike) -> dict[str, Any]:
    """{"run_dir", "step", "sha256", "stage", ...} of a teacher run (``CheckpointError`` if it has no checkpoint)."""
    path = resolve_checkpoint(teacher_dir, CHECKPOINT_FILE, "teacher checkpoint")
    meta = read_metadata(path)
    if "model_config" not in meta:
        raise CheckpointError(f"{path} holds no diffusion model (no model config in its metadata)")
    info = meta.get(DISTILLATION_KEY) or {}
    record = {"run_dir": str(Path(teacher_dir).resolve()), "step": int(meta.get("step", 0)),
              "sha256": file_sha256(path), "stage": info.get("stage", "cfg")}
    if info.get("sampling"):
        record["sampling_steps"] = int(info["sampling"]["steps"])
    return record


def distill_config(
    teacher_dir: str | os.PathLike,
    *,
    stage: str = STAGE_GUIDANCE,
    w_range: WRange | None = None,
    steps_from: int | None = None,
    weighting: str = "truncated_snr",
    **loop_overrides: Any,
) -> DistillConfig:
    """The config of a new distillation of ``teacher_dir``: the teacher checked and recorded, the loop defaults
    (``DISTILL_DEFAULTS``) with ``loop_overrides`` (None values ignored) on top.

    Stage 1 needs a classifier-free-guided (not distilled) teacher and a w range. Stage 2 needs a distilled
    teacher; its w range defaults to the teacher's and must lie inside it; ``steps_from`` defaults to a
    progressive teacher's own steps (and must equal them) and is required for a stage-1 teacher.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown distillation stage {stage!r}; choose from {', '.join(STAGES)}")
    record = teacher_record(teacher_dir)
    meta = read_metadata(resolve_checkpoint(teacher_dir, CHECKPOINT_FILE))
    info = meta.get(DISTILLATION_KEY)
    if stage == STAGE_GUIDANCE:
        if info:
            raise TeacherError(f"{teacher_dir} is already a distilled student ({info.get('stage')} stage); "
                               "distil it further with --progressive")
        if w_range is None:
            raise ValueError("guidance distillation needs a w range (--w-range W_MIN,W_MAX)")
    else:
        if not info:
            raise TeacherError(f"progressive distillation needs a w-conditioned teacher; {teacher_dir} is not "
                               "distilled: run guidance distillation first (cfgdiff distill RUN_DIR --w-range 0,4)")
        teacher_range = WRange.from_json(info["w_range"])
        if w_range is None:
            w_range = teacher_range
        elif not teacher_range.contains(w_range):
            raise TeacherError(f"the w range {w_range} does not lie inside the teacher's {teacher_range}")
        own = record.get("sampling_steps")
        if steps_from is None:
            if own is None:
                raise TeacherError("--steps-from N is required for a stage-1 teacher: the DDIM steps it is "
                                   "sampled with, which the student halves (e.g. 32)")
            steps_from = own
        elif own is not None and steps_from != own:
            raise TeacherError(f"the teacher was distilled for {own} DDIM steps; --steps-from must be {own} "
                               f"(got {steps_from})")
        check_halving(steps_from)
    train_config = meta.get("train_config", {})
    data_spec = meta.get("data_spec") or train_config.get("data_spec")
    values = {**DISTILL_DEFAULTS, "steps": STAGE_STEPS[stage],
              **{k: v for k, v in loop_overrides.items() if v is not None}}
    values.setdefault("hflip", bool(train_config.get("hflip") or False))  # the teacher's data, as it saw it
    config = DistillConfig(
        **values, teacher=record["run_dir"], teacher_step=record["step"], teacher_sha256=record["sha256"],
        stage=stage, w_min=w_range.w_min, w_max=w_range.w_max, steps_from=steps_from, weighting=weighting,
        data=str(meta.get("data", train_config.get("data", ""))), data_spec=data_spec,
        logsnr_schedule=train_config.get("logsnr_schedule", "cosine"),
        logsnr_min=float(train_config.get("logsnr_min", LOGSNR_MIN)),
        logsnr_max=float(train_config.get("logsnr_max", LOGSNR_MAX)),
    )
    config.validate()
    return config


def _dataset_of(config: DistillConfig):
    from cfgdiff.data import DataSpec, load_dataset

    spec = DataSpec.from_json(config.data_spec) if config.data_spec else DataSpec(source=config.data)
    return load_dataset(spec, "train")


def _copy_network(network: nn.Module) -> nn.Module:
    """A fresh, trainable copy of a network (same config, same weights)."""
    copy = build_model(network.config())
    copy.load_state_dict(network.state_dict())
    return copy


def distillation_record(config: DistillConfig) -> dict[str, Any]:
    """The ``distillation`` metadata of a run (module docstring)."""
    teacher = teacher_record(config.teacher)
    teacher_info = read_metadata(resolve_checkpoint(config.teacher, CHECKPOINT_FILE)).get(DISTILLATION_KEY) or {}
    record: dict[str, Any] = {
        "stage": config.stage,
        "w_range": config.w_range.to_json(),
        "teacher": teacher,
        "origin": teacher_info.get("origin", teacher),
        "noise_end_logsnr": None,
    }
    if config.stage == STAGE_PROGRESSIVE:
        record.update(
            noise_end_logsnr=NOISE_END_LOGSNR, weighting=config.weighting, teacher_steps=config.steps_from,
            sampling={"sampler": "ddim", "steps": config.student_steps, "grid": "cosine",
                      "logsnr_min": LOGSNR_MIN, "logsnr_max": LOGSNR_MAX},
        )
    return record


def distill_trainer(config: DistillConfig, dataset, *, dist=None) -> Trainer:
    """A ``Trainer`` of the student of ``config`` (teacher loaded, student initialised from it, the stage's loss)."""
    config.validate()
    if config.stage == STAGE_GUIDANCE:
        teacher = load_model(config.teacher)  # EMA weights, eval mode, no gradients
        loss = GuidanceDistillationLoss(teacher, config.w_range, logsnr_schedule=config.logsnr_schedule,
                                        logsnr_min=config.logsnr_min, logsnr_max=config.logsnr_max)

        def build() -> nn.Module:
            return init_student(teacher)
    else:
        student = load_student(config.teacher)
        teacher = student.network
        loss = ProgressiveDistillationLoss(student.w_eps_fn(), config.w_range, student_steps=config.student_steps,
                                           x_bound=dataset.x_bound, weighting=config.weighting,
                                           noise_end_logsnr=NOISE_END_LOGSNR)

        def build() -> nn.Module:
            return _copy_network(teacher)

    if teacher.num_classes != dataset.num_classes or tuple(teacher.data_shape) != tuple(dataset.data_shape):
        raise TeacherError(f"the teacher ({teacher.num_classes} classes, {tuple(teacher.data_shape)}) does not "
                           f"match its data {config.data!r} ({dataset.num_classes}, {tuple(dataset.data_shape)})")
    trainer = Trainer(build, loss, dataset, config, config=config, dist=dist)
    teacher.to(trainer.device)  # in place: the loss's teacher functions follow
    trainer.teacher = teacher
    trainer.metadata_extra.update({
        "kind": DIFFUSION_KIND,
        "model_config": trainer.model.config(),
        "data": dataset.name,
        "data_spec": config.data_spec,
        "data_shape": list(dataset.data_shape),
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.class_names),
        "x_bound": dataset.x_bound,
        DISTILLATION_KEY: distillation_record(config),
    })
    return trainer


def distill(
    config: DistillConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resume_changes: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_start: Callable[[Trainer], None] | None = None,
    handle_signals: bool = True,
) -> Trainer:
    """Distil (or continue distilling) into ``run_dir``; returns the Trainer at the end.

    Everything is checked before anything is written. On resume the stored config is used with the loop
    options in ``resume_changes`` applied (``RESUME_MAY_CHANGE``; the teacher, stage, w range, steps and data
    may not change), and the teacher must still be the recorded checkpoint (same SHA-256).
    """

    def read_config(stored: dict[str, Any]) -> DistillConfig:
        if "teacher" not in stored:
            raise RunDirError(f"{run_dir} holds a run that is not a distillation; resume it with cfgdiff train")
        return DistillConfig.from_json(stored)

    def plan(config: DistillConfig) -> RunPlan:
        if resume and teacher_record(config.teacher)["sha256"] != config.teacher_sha256:
            raise RunDirError(f"the teacher {config.teacher} changed since this distillation began (its checkpoint "
                              "no longer has the recorded SHA-256); start a new run")
        if Path(run_dir).resolve() == Path(config.teacher).resolve():
            raise RunDirError("--run-dir must differ from the teacher's run directory")
        dataset = _dataset_of(config)
        if config.hflip is None:
            config.hflip = False
        return RunPlan(lambda dist: distill_trainer(config, dataset, dist=dist))

    return train_or_resume(config, run_dir, plan=plan, layout=DIFFUSION_LAYOUT, fixed=DISTILL_RESUME_FIXED,
                           read_config=read_config, resume=resume, overwrite=overwrite,
                           resume_changes=resume_changes or {}, on_step=on_step, on_start=on_start,
                           handle_signals=handle_signals)


def stage_cost(run_dir: str | os.PathLike) -> dict[str, float]:
    """Training cost of a run from its ``loss.jsonl``: {"steps", "seconds", "seconds_per_step"} (the wall time
    of the logged intervals, Σ interval steps / steps_per_sec)."""
    import json

    path = Path(run_dir) / DIFFUSION_LAYOUT.loss_log
    steps, seconds, last = 0, 0.0, 0
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "event" in entry:
            if entry.get("event") == "resume":
                last = int(entry.get("step", last))
            continue
        step, rate = int(entry["step"]), float(entry.get("steps_per_sec", 0.0))
        if rate > 0 and math.isfinite(rate) and step > last:
            seconds += (step - last) / rate
            steps += step - last
        last = step
    return {"steps": float(steps), "seconds": seconds, "seconds_per_step": seconds / steps if steps else math.nan}


__all__ = [
    "DISTILL_DEFAULTS",
    "DISTILL_RESUME_FIXED",
    "STAGES",
    "STAGE_STEPS",
    "DistillConfig",
    "TeacherError",
    "distill",
    "distill_config",
    "distill_trainer",
    "distillation_record",
    "stage_cost",
    "teacher_record",
]
