"""The noisy classifier p_φ(c | z_λ, λ) of classifier guidance (Dhariwal & Nichol 2021), and its training.

Network: the U-Net's down path (``cfgdiff.models.unet.ResBlock`` and ``Downsample``, conditioned on λ through
``LogSNREmbedding`` by adaptive GroupNorm; no class input), then GroupNorm-SiLU, global average pooling and a
linear head to K logits.

Training, on the same noise as the diffusion model (Algorithm 1 without label dropout):

    λ ~ p(λ) (the diffusion run's distribution, "cosine" by default),  ε ~ N(0, I),  z_λ = α_λ x + σ_λ ε
    loss = -log p_φ(c | z_λ, λ)   (cross-entropy)

with AdamW, linear warm-up and EMA weights, written to ``RUN_DIR/classifier.safetensors`` (safetensors,
resumable: optimizer and generator state are stored). Guidance uses ``log_prob_fn``:
ε̃ = ε(z, c) - w σ_λ ∇_z log p_φ(c | z_λ) (``cfgdiff.guidance.classifier_guidance``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cfgdiff.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_tensors,
    optimizer_tensors,
    resolve_checkpoint,
    save_checkpoint,
)
from cfgdiff.data import load_dataset
from cfgdiff.diffusion import diffuse
from cfgdiff.models.embeddings import LogSNREmbedding
from cfgdiff.models.unet import Downsample, ResBlock
from cfgdiff.schedule import LOGSNR_MAX, LOGSNR_MIN, sample_logsnr

CLASSIFIER_FILE = "classifier.safetensors"
CLASSIFIER_KIND = "noisy_classifier"


class NoisyClassifier(nn.Module):
    """logits = p_φ(· | z_λ, λ): z [B, C, H, W], logsnr [B] -> [B, K]."""

    def __init__(
        self,
        image_shape: Sequence[int],  # (C, H, W)
        num_classes: int,  # K
        base_channels: int = 16,  # width of level 0
        channel_mults: Sequence[int] = (1, 2, 4),  # one entry per resolution level, as the U-Net
        num_res_blocks: int = 1,  # residual blocks per level
        groups: int = 8,  # GroupNorm groups
        emb_dim: int | None = None,  # λ-embedding width; None = 4 * base_channels
    ) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.base_channels = int(base_channels)
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.num_res_blocks = int(num_res_blocks)
        self.groups = int(groups)
        self.emb_dim = 4 * self.base_channels if emb_dim is None else int(emb_dim)
        widths = [self.base_channels * m for m in self.channel_mults]
        self.logsnr_emb = LogSNREmbedding(self.emb_dim)
        self.conv_in = nn.Conv2d(self.data_shape[0], widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(self.num_res_blocks):
                self.down.append(ResBlock(ch, width, self.emb_dim, self.groups, 0.0))
                ch = width
            if level != len(widths) - 1:
                self.down.append(Downsample(ch))
        self.norm_out = nn.GroupNorm(self.groups, ch)
        self.head = nn.Linear(ch, self.num_classes)

    def config(self) -> dict[str, Any]:
        return {"image_shape": list(self.data_shape), "num_classes": self.num_classes,
                "base_channels": self.base_channels, "channel_mults": list(self.channel_mults),
                "num_res_blocks": self.num_res_blocks, "groups": self.groups, "emb_dim": self.emb_dim}

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W], [B] -> logits [B, K]."""
        logsnr = logsnr.reshape(-1).expand(z.shape[0])
        emb = F.silu(self.logsnr_emb(logsnr))  # [B, D]
        h = self.conv_in(z.to(self.conv_in.weight.dtype))
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        h = F.silu(self.norm_out(h)).mean(dim=(-2, -1))  # [B, C_last]
        return self.head(h).to(z.dtype)

    def log_prob_fn(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p_φ(labels | z_λ): [B], the form ``classifier_guidance`` takes (differentiable in z)."""
        return torch.log_softmax(self(z, logsnr), dim=1).gather(1, labels.long()[:, None])[:, 0]


@dataclass
class ClassifierConfig:
    """Every knob of a classifier run; stored in the checkpoint's metadata."""

    data: str = "digits"
    steps: int = 2000  # optimizer steps
    batch_size: int = 128
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
        for name in ("steps", "batch_size", "checkpoint_every", "base_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
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


def train_classifier(
    config: ClassifierConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[NoisyClassifier, dict[str, Any]]:
    """Train (or continue) a noisy classifier into ``run_dir/classifier.safetensors``; returns (EMA model, meta)."""
    config.validate()
    run_dir = Path(run_dir)
    path = run_dir / CLASSIFIER_FILE
    if path.exists() and not (resume or overwrite):
        raise CheckpointError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
    if resume and not path.exists():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    train_set, test_set = load_dataset(config.data, "train"), load_dataset(config.data, "test")
    if not train_set.is_image:
        raise ValueError(f"the noisy classifier is for image data; {config.data!r} is not")
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = NoisyClassifier(train_set.data_shape, train_set.num_classes, base_channels=config.base_channels).to(device)
    ema = NoisyClassifier(train_set.data_shape, train_set.num_classes, base_channels=config.base_channels).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    if resume:
        groups, meta = load_checkpoint(path)
        stored = ClassifierConfig(**meta["train_config"])
        stored.steps, stored.device = config.steps, config.device
        config = stored
        model.load_state_dict(groups["model"])
        ema.load_state_dict(groups["ema"])
        load_optimizer_tensors(opt, {k: v.to(device) for k, v in groups["optim"].items()})
        generator.set_state(groups["rng"]["generator"])
        step = int(meta["step"])

    def save(final: bool) -> dict[str, Any]:
        meta = {"kind": CLASSIFIER_KIND, "step": step, "model_config": model.config(), "data": config.data,
                "train_config": asdict(config)}
        if final:  # held-out accuracy on noised test images at a few λ
            ema_cpu = NoisyClassifier(**ema.config())
            ema_cpu.load_state_dict({k: v.cpu() for k, v in ema.state_dict().items()})
            meta["noisy_test_accuracy"] = {str(lam): round(noisy_accuracy(ema_cpu, test_set.x, test_set.labels, lam), 4)
                                           for lam in (-5.0, 0.0, 5.0)}
        save_checkpoint(path, model=model.state_dict(), ema=ema.state_dict(), optim=optimizer_tensors(opt),
                        rng={"generator": generator.get_state()}, metadata=meta)
        return meta

    run_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {}
    while step < config.steps:
        model.train()
        idx = torch.randint(0, len(train_set), (config.batch_size,), generator=generator)
        x, labels = train_set.x[idx].to(device), train_set.labels[idx].to(device)
        logsnr = sample_logsnr(x.shape[0], config.logsnr_schedule, logsnr_min=config.logsnr_min,
                               logsnr_max=config.logsnr_max, generator=generator).to(device)
        eps = torch.randn(x.shape, generator=generator).to(device)
        loss = F.cross_entropy(model(diffuse(x=x, eps=eps, logsnr=logsnr), logsnr), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / max(config.warmup_steps, 1))
        opt.step()
        step += 1
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
        if on_step is not None:
            on_step(step, float(loss.detach()))
        if step % config.checkpoint_every == 0 or step == config.steps:
            meta = save(final=step == config.steps)
    if not meta or "noisy_test_accuracy" not in meta:
        meta = save(final=True)
    return ema.eval(), meta


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


__all__ = ["CLASSIFIER_FILE", "ClassifierConfig", "NoisyClassifier", "describe", "load_classifier",
           "train_classifier"]
