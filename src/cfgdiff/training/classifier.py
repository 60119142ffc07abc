"""Training the noisy classifier p_φ(c | z_λ, λ) of classifier guidance (Dhariwal & Nichol 2021), and its run files.

Network: ``cfgdiff.models.noisy_classifier.NoisyClassifier`` (re-exported here).

Training goes through the project's one ``Trainer`` (``cfgdiff.training``) with ``NoisyClassifierLoss``, on
the same noise as the diffusion model (Algorithm 1 without label dropout):

    λ ~ p(λ) (the diffusion run's distribution, "cosine" by default),  ε ~ N(0, I),  z_λ = α_λ x + σ_λ ε
    loss = -log p_φ(c | z_λ, λ)   (cross-entropy)

so it gets the same AdamW, warm-up, EMA, kill-safe checkpoints, resume, logging, torchrun and precision
options. Files in RUN_DIR (``CLASSIFIER_LAYOUT``, so a classifier may share a diffusion run's directory):
``classifier.safetensors`` (the latest checkpoint), ``classifier-step-*.safetensors`` (the last K),
``classifier-config.json``, ``classifier-data.json``, ``classifier-loss.jsonl``. Guidance uses
``log_prob_fn``: ε̃ = ε(z, c) - w σ_λ ∇_z log p_φ(c | z_λ) (``cfgdiff.guidance.classifier_guidance``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cfgdiff.core.diffusion import diffuse
from cfgdiff.core.schedule import LOGSNR_MAX, LOGSNR_MIN
from cfgdiff.data import DataSpec, load_dataset
from cfgdiff.models.noisy_classifier import NoisyClassifier
from cfgdiff.runtime.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from cfgdiff.training import (
    DistContext,
    LoopConfig,
    NoisyClassifierLoss,
    RunLayout,
    RunPlan,
    Trainer,
    train_or_resume,
)

CLASSIFIER_FILE = "classifier.safetensors"
CLASSIFIER_KIND = "noisy_classifier"
CLASSIFIER_LAYOUT = RunLayout(checkpoint=CLASSIFIER_FILE, config="classifier-config.json",
                              loss_log="classifier-loss.jsonl", provenance="classifier-data.json",
                              step_prefix="classifier-step-", tensorboard="tensorboard-classifier", extra=())


@dataclass
class ClassifierConfig(LoopConfig):
    """Every knob of a classifier run (the loop's, see ``LoopConfig``, plus these); stored in its checkpoints."""

    data: str = "digits"  # data source (a built-in name or a path)
    data_spec: dict[str, Any] | None = None  # the full cfgdiff.data.DataSpec as JSON (None: DataSpec(data))
    steps: int = 2000  # optimizer steps
    batch_size: int = 128  # global batch
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 100
    ema_decay: float = 0.999
    logsnr_schedule: str = "cosine"  # the diffusion model's training λ distribution
    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX
    seed: int = 0
    checkpoint_every: int = 500
    base_channels: int = 16
    device: str = "cpu"

    def validate(self) -> None:
        if self.base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {self.base_channels}")
        super().validate()
        if self.logsnr_schedule not in ("cosine", "uniform"):
            raise ValueError(f"unknown logsnr schedule {self.logsnr_schedule!r}")


@torch.no_grad()
def noisy_accuracy(model: NoisyClassifier, x: torch.Tensor, labels: torch.Tensor, logsnr: float,
                   seed: int = 0) -> float:
    """Accuracy of argmax p_φ(c | z_λ) on z_λ = α x + σ ε at one λ (fixed noise from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(x.shape, generator=generator)
    lam = torch.full((x.shape[0],), float(logsnr))
    z = diffuse(x=x, eps=eps, logsnr=lam)
    return float((model(z, lam).argmax(1) == labels).float().mean())


def classifier_trainer(config: ClassifierConfig, dataset, *, dist: DistContext | None = None) -> Trainer:
    """A ``Trainer`` of the noisy classifier on ``dataset`` with ``NoisyClassifierLoss``."""
    loss = NoisyClassifierLoss(config.logsnr_schedule, config.logsnr_min, config.logsnr_max)
    trainer = Trainer(
        lambda: NoisyClassifier(dataset.data_shape, dataset.num_classes, base_channels=config.base_channels),
        loss, dataset, config, config=config, dist=dist,
    )
    trainer.metadata_extra.update({"kind": CLASSIFIER_KIND, "model_config": trainer.model.config(),
                                   "data": config.data})
    return trainer


def train_classifier(
    config: ClassifierConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resume_changes: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_start: Callable[[Trainer], None] | None = None,
    handle_signals: bool = True,
) -> tuple[NoisyClassifier, dict[str, Any]]:
    """Train (or continue) a noisy classifier into ``run_dir/classifier.safetensors``; returns (EMA model, meta).

    On resume the stored config continues with ``resume_changes`` applied (loop options only, see
    ``RESUME_MAY_CHANGE``; None values ignored); without them, with ``config``'s ``steps`` and ``device``.
    The final checkpoint's metadata holds ``noisy_test_accuracy`` (EMA weights on noised test images at
    λ = -5, 0, 5). The returned model has ``interrupted`` (the signal's name, or None) and ``is_main``.
    """
    config.validate()
    run_dir = Path(run_dir)
    path = run_dir / CLASSIFIER_FILE
    if path.exists() and not (resume or overwrite):
        raise CheckpointError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
    if resume and not path.exists():
        raise CheckpointError(f"nothing to resume: {path} does not exist")

    def plan(config: ClassifierConfig) -> RunPlan:
        spec = DataSpec.from_json(config.data_spec) if config.data_spec else DataSpec(source=config.data)
        train_set, test_set = load_dataset(spec, "train"), load_dataset(spec, "test")
        if not train_set.is_image:
            raise ValueError(f"the noisy classifier is for image data; {config.data!r} is not")
        if config.hflip is None:
            config.hflip = bool(getattr(train_set, "hflip_default", False))

        def finalize(trainer: Trainer) -> None:  # held-out accuracy on noised test images at a few λ
            if not trainer.dist.is_main:
                return
            ema_cpu = NoisyClassifier(**trainer.ema.config())
            ema_cpu.load_state_dict({k: v.cpu() for k, v in trainer.ema.state_dict().items()})
            trainer.metadata_extra["noisy_test_accuracy"] = {
                str(lam): round(noisy_accuracy(ema_cpu, test_set.x, test_set.labels, lam), 4)
                for lam in (-5.0, 0.0, 5.0)
            }

        return RunPlan(lambda dist: classifier_trainer(config, train_set, dist=dist), finalize)

    trainer = train_or_resume(config, run_dir, plan=plan, layout=CLASSIFIER_LAYOUT, fixed=frozenset({"hflip"}),
                              resume=resume, overwrite=overwrite, resume_changes=resume_changes, on_step=on_step,
                              on_start=on_start, handle_signals=handle_signals)
    model = trainer.ema.eval()
    model.interrupted = trainer.interrupted
    model.is_main = trainer.dist.is_main
    return model, trainer.metadata()


def load_classifier(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> NoisyClassifier:
    """The EMA noisy classifier of a ``train-classifier`` run (directory or the .safetensors file)."""
    path = resolve_checkpoint(run_dir, CLASSIFIER_FILE, "noisy classifier (train one with cfgdiff train-classifier)")
    groups, meta = load_checkpoint(path)
    if meta.get("kind") != CLASSIFIER_KIND:
        raise CheckpointError(f"{path} is not a noisy-classifier checkpoint")
    model = NoisyClassifier(**meta["model_config"])
    model.load_state_dict(groups["ema"] or groups["model"])
    model.train_meta = meta
    return model.to(device).eval().requires_grad_(False)


def describe(meta: dict[str, Any]) -> str:
    """One line: steps and noisy test accuracy by λ."""
    acc = ", ".join(f"λ={k}: {v:.3f}" for k, v in meta.get("noisy_test_accuracy", {}).items())
    return f"step {meta.get('step')}; noisy test accuracy {acc}"


__all__ = ["CLASSIFIER_FILE", "CLASSIFIER_LAYOUT", "ClassifierConfig", "NoisyClassifier", "classifier_trainer",
           "describe", "load_classifier", "train_classifier"]
