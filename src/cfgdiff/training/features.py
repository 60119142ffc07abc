"""Training the feature classifier (``cfgdiff train-features``) through the project's one ``Trainer``.

The network is ``FeatureClassifier`` (sized by ``default_classifier_config`` for the data's image shape), the
loss ``ClassifierLoss`` (cross-entropy, label smoothing 0.05, random ±1-pixel shifts); optimizer, warm-up, EMA,
checkpoints, resume and logging are the Trainer's (``cfgdiff.training``). At the end, the EMA weights are scored
on the held-out test split and written, with that accuracy, the data's name and spec and the recipe, to
``RUN_DIR/features.safetensors``: the file ``cfgdiff eval --features RUN_DIR`` reads.

Files in RUN_DIR (``FEATURES_LAYOUT``: their own names, so the directory may be shared with other runs)::

    features.safetensors                    the trained feature network (EMA weights) and its record
    features-checkpoint.safetensors         the latest training checkpoint (resume), step files beside it
    features-config.json, features-loss.jsonl, features-data.json

The network and its file are ``cfgdiff.models.feature_classifier``'s; the loss (``ClassifierLoss``: cross-entropy with
label smoothing ε = 0.05 on images shifted at random by up to ±1 pixel, edges padded with the background value -1,
the shift drawn from the trainer's generator) is here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cfgdiff.data import DataSpec, load_dataset
from cfgdiff.models.feature_classifier import (
    FEATURES_FILE,
    ClassifierFeatures,
    FeatureClassifier,
    FeatureError,
    classifier_accuracy,
    default_classifier_config,
    save_feature_classifier,
)
from cfgdiff.runtime.distributed import DistContext
from cfgdiff.training import LoopConfig, RunLayout, RunPlan, Trainer, train_or_resume

FEATURES_KIND = "feature_classifier"
FEATURES_LAYOUT = RunLayout(checkpoint="features-checkpoint.safetensors", config="features-config.json",
                            loss_log="features-loss.jsonl", provenance="features-data.json",
                            step_prefix="features-checkpoint-step-", tensorboard="tensorboard-features", extra=())
TRAIN_ACCURACY_ROWS = 10_000  # training images scored for the recorded training accuracy (a seeded subset)

LABEL_SMOOTHING = 0.05
MAX_SHIFT = 1


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """Shift each image by up to ±max_shift pixels in each direction, padding with the background value -1."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator, device=generator.device).to(x.device)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator, device=generator.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # [n, h]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # [n, w]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class ClassifierLoss:
    """Cross-entropy with label smoothing on randomly shifted images: ``loss(model, batch, generator)``."""

    def __init__(self, label_smoothing: float = LABEL_SMOOTHING, max_shift: int = MAX_SHIFT) -> None:
        self.label_smoothing, self.max_shift = label_smoothing, max_shift

    def __call__(self, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor:
        x = random_shift(batch.x, generator, self.max_shift)
        return F.cross_entropy(model(x).float(), batch.labels, label_smoothing=self.label_smoothing)

    def recipe(self) -> dict[str, Any]:
        return {"loss": "cross-entropy", "label_smoothing": self.label_smoothing,
                "augment": f"random shift ±{self.max_shift} px"}


@dataclass
class FeatureTrainConfig(LoopConfig):
    """Every knob of a feature-classifier run (the loop's, see ``LoopConfig``, plus these)."""

    data: str = "digits"  # data source (a built-in name or a path)
    data_spec: dict[str, Any] | None = None  # the full cfgdiff.data.DataSpec as JSON (None: DataSpec(data))
    name: str | None = None  # the data's name in metric names ("FID ({name}-classifier features)"); None: the data's
    steps: int = 3000  # optimizer steps
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    ema_decay: float = 0.999
    label_smoothing: float = 0.05  # of the cross-entropy
    max_shift: int = 1  # random shift of each training image, pixels in each direction
    width: int = 32  # channels of the first stage (doubling per stage, at most 4x)
    feature_dim: int | None = None  # D of the penultimate features; None: 64 up to 16 px a side, else 128
    dropout: float = 0.2  # before the classification head

    def validate(self) -> None:
        if self.width < 1 or (self.feature_dim is not None and self.feature_dim < 1):
            raise ValueError(f"width and feature_dim must be >= 1, got {self.width}, {self.feature_dim}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.dropout < 1.0 or self.max_shift < 0:
            raise ValueError("label_smoothing and dropout must lie in [0, 1), max_shift must be >= 0")
        super().validate()

    def spec(self) -> DataSpec:
        return DataSpec.from_json(self.data_spec) if self.data_spec else DataSpec(source=self.data)


def network_config(config: FeatureTrainConfig, dataset: Any) -> dict[str, Any]:
    """The ``FeatureClassifier`` config for this data: the preset by image shape, with the run's overrides."""
    if not dataset.is_image:
        raise FeatureError(f"feature networks are for image data; {config.data} holds {dataset.data_shape[0]}-D "
                           "points (eval scores them by the sliced Wasserstein distance)")
    net = default_classifier_config(dataset.data_shape, dataset.num_classes)
    net.update(width=config.width, dropout=config.dropout)
    if config.feature_dim is not None:
        net["feature_dim"] = config.feature_dim
    return net


def feature_trainer(config: FeatureTrainConfig, dataset: Any, *, dist: DistContext | None = None) -> Trainer:
    """A ``Trainer`` of the feature classifier on ``dataset`` with ``ClassifierLoss``."""
    net_config = network_config(config, dataset)
    loss = ClassifierLoss(config.label_smoothing, config.max_shift)
    trainer = Trainer(lambda: FeatureClassifier(**net_config), loss, dataset, config, config=config, dist=dist)
    trainer.metadata_extra.update({"kind": FEATURES_KIND, "model_config": net_config, "data": config.data})
    return trainer


def _ema_on_cpu(trainer: Trainer) -> FeatureClassifier:
    net = FeatureClassifier(**trainer.metadata_extra["model_config"])
    net.load_state_dict({k: v.detach().cpu() for k, v in trainer.ema.state_dict().items()})
    return net.eval()


def train_features(
    config: FeatureTrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resume_changes: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_start: Callable[[Trainer], None] | None = None,
    handle_signals: bool = True,
) -> tuple[ClassifierFeatures | None, dict[str, Any]]:
    """Train (or continue) a feature classifier in ``run_dir``; returns (the extractor, the checkpoint's metadata).

    When the run reaches its total, the EMA network is scored on the test split and written to
    ``run_dir/features.safetensors`` (record: ``data_name``, ``data_spec``, ``test_accuracy``, ``test_count``,
    ``train_accuracy``, ``step``, ``recipe``). An interrupted run (``meta["interrupted"]``) writes no such file
    and returns None for the extractor; resume it. On resume the stored config continues with
    ``resume_changes`` applied (loop options only); without them, with ``config``'s ``steps`` and ``device``.
    """
    config.validate()
    run_dir = Path(run_dir)

    def plan(config: FeatureTrainConfig) -> RunPlan:
        spec = config.spec()
        train_set, test_set = load_dataset(spec, "train"), load_dataset(spec, "test")
        network_config(config, train_set)  # refuse vector data before anything is written
        if config.hflip is None:
            config.hflip = bool(getattr(train_set, "hflip_default", False))

        def finalize(trainer: Trainer) -> None:  # held-out accuracy of the EMA weights, into the checkpoint
            if not trainer.dist.is_main:
                return
            net = _ema_on_cpu(trainer)
            rows = torch.from_numpy(np.random.default_rng(0).permutation(len(train_set))[:TRAIN_ACCURACY_ROWS])
            subset = _Subset(train_set, torch.sort(rows).values)
            trainer.metadata_extra.update(test_accuracy=round(classifier_accuracy(net, test_set), 6),
                                          test_count=len(test_set),
                                          train_accuracy=round(classifier_accuracy(net, subset), 6))

        return RunPlan(lambda dist: feature_trainer(config, train_set, dist=dist), finalize)

    trainer = train_or_resume(config, run_dir, plan=plan, layout=FEATURES_LAYOUT, fixed=frozenset({"hflip"}),
                              resume=resume, overwrite=overwrite, resume_changes=resume_changes, on_step=on_step,
                              on_start=on_start, handle_signals=handle_signals)
    config, spec = trainer.config, trainer.config.spec()  # the run's config (the stored one on resume)
    data_name = config.name or trainer.dataset.name
    meta = trainer.metadata()
    meta["interrupted"] = trainer.interrupted
    meta["is_main"] = trainer.dist.is_main
    if trainer.interrupted or not trainer.dist.is_main or trainer.step < config.steps:
        return None, meta
    net = _ema_on_cpu(trainer)
    record = {
        "data_name": data_name, "data_spec": spec.to_json(), "data_source": meta.get("data_source"),
        "test_accuracy": meta["test_accuracy"], "test_count": meta["test_count"],
        "train_accuracy": meta["train_accuracy"], "step": trainer.step, "trained_by": "cfgdiff train-features",
        "recipe": {**trainer.loss_fn.recipe(), "optimizer": "AdamW(betas=(0.9, 0.99))", "lr": config.lr,
                   "weight_decay": config.weight_decay, "warmup_steps": config.warmup_steps,
                   "batch_size": config.batch_size, "steps": config.steps, "ema_decay": config.ema_decay,
                   "hflip": config.hflip, "seed": config.seed},
    }
    save_feature_classifier(net, run_dir / FEATURES_FILE, record)
    return ClassifierFeatures(net, f"{data_name}-classifier", {"config": net.config(), **record}), meta


class _Subset:
    """Rows ``index`` of a ``cfgdiff.data.Dataset`` (stored, labels, to_x), for scoring without copying all."""

    def __init__(self, dataset: Any, index: torch.Tensor) -> None:
        self.dataset, self.index = dataset, index

    def __len__(self) -> int:
        return int(self.index.numel())

    @property
    def stored(self) -> torch.Tensor:
        return torch.as_tensor(self.dataset.stored[self.index])

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.dataset.labels[self.index])

    def to_x(self, stored: torch.Tensor) -> torch.Tensor:
        return self.dataset.to_x(stored)
