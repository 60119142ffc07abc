"""Stage 1, guidance distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models", arXiv 2210.03142).

A student ε_η(z, λ, c, w) -- the teacher's architecture plus an embedding of w added to the λ/class
conditioning, its output layer zero-initialised, the rest copied from the teacher's EMA weights -- learns what the
classifier-free-guided teacher computes with two rows per step:

    loss = E_{x, c, λ, ε, w} || ε_η(z_λ, λ, c, w) - ε̃_w(z_λ, c) ||²,
    ε̃_w(z, c) = (1 + w) ε_θ(z, c) - w ε_θ(z)          (Ho & Salimans 2022, Algorithm 2; the paper's w),

with (x, c) from the teacher's training data, λ from the teacher's training distribution (``sample_logsnr``),
z_λ = α_λ x + σ_λ ε, and w ~ U(w_min, w_max). The target is ONE batched teacher call of 2B rows, without
gradients (``guided_teacher``). The loss is the ε-MSE the teacher itself was trained with; Meng et al. write
it in x-space, ||x̂_η - x̂_θ^w||² weighted by ω(λ), which is this loss for ω(λ) = e^{λ} (x̂ = (z - σ ε)/α, so
||Δx̂||² = e^{-λ} ||Δε||²).

At initialisation the w embedding is exactly zero, so the student equals the teacher's conditional model
ε_θ(z, c), i.e. the guided teacher at w = 0, for every w.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cfgdiff.core.contract import EpsFn
from cfgdiff.core.diffusion import diffuse, loss_eps_mse
from cfgdiff.core.schedule import LOGSNR_MAX, LOGSNR_MIN, sample_logsnr
from cfgdiff.distillation.student import WRange
from cfgdiff.guidance import combine_cfg, eval_cond_uncond
from cfgdiff.models import build_model

# A w-conditioned denoiser: eps = f(z, logsnr, labels, w), w a [B] tensor (a student network, or a guided teacher).
WEpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["GuidanceDistillationLoss", "WEpsFn", "guided_teacher", "init_student", "student_config"]


def _per_row(w: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """w as [B, 1, ..., 1] in ``like``'s dtype and device (a number broadcasts to every row)."""
    w = torch.as_tensor(w, dtype=like.dtype, device=like.device).reshape(-1)
    return w.expand(like.shape[0]).reshape(-1, *([1] * (like.ndim - 1)))


def guided_teacher(eps_fn: EpsFn) -> WEpsFn:
    """The classifier-free-guided ``eps_fn`` as a function of a per-row w:

        f(z, λ, c, w) = (1 + w) ε(z, c) - w ε(z, ∅),

    from ONE batched call of 2B rows (conditional rows, then the same rows with the null label K). Works for
    any eps_fn (a trained network, ``cfgdiff.core.toy.GaussianMixture`` with exact scores, ...).
    """

    def guided(z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        eps_cond, eps_uncond = eval_cond_uncond(eps_fn, z, logsnr, labels)
        return combine_cfg(eps_cond, eps_uncond, _per_row(w, eps_cond))

    guided.num_classes = eps_fn.num_classes  # type: ignore[attr-defined]
    return guided


def student_config(teacher_config: dict[str, Any]) -> dict[str, Any]:
    """The student's architecture: the teacher's ``model.config()`` plus the w embedding."""
    return {**teacher_config, "w_embedding": True}


def init_student(teacher: nn.Module) -> nn.Module:
    """A w-conditioned copy of ``teacher``: every teacher weight copied, the w embedding new (output zero).

    Raises ``ValueError`` when the teacher is already w-conditioned (distil it further with the progressive stage).
    """
    if getattr(teacher, "w_embedding", False):
        raise ValueError("the teacher is already a guidance-distilled student; use the progressive stage")
    student = build_model(student_config(teacher.config()))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    new = [k for k in missing if not k.startswith("cond.w_emb.")]
    if new or unexpected:
        raise ValueError(f"teacher and student weights do not match (missing {new}, unexpected {unexpected})")
    return student.to(next(teacher.parameters()).device)


class GuidanceDistillationLoss:
    """Stage 1's loss on a batch (x, c): E || ε_η(z_λ, λ, c, w) - ε̃_w(z_λ, c) ||² (module docstring).

    ``teacher``: the CFG teacher as an eps_fn (its guided prediction is ``guided_teacher(teacher)``);
    ``w_range``: the interval w is drawn from, uniformly; λ from ``logsnr_schedule`` on [logsnr_min, logsnr_max]
    (use the teacher's). Draw order from ``generator``: λ, ε, w.
    """

    def __init__(
        self,
        teacher: EpsFn,
        w_range: WRange,
        *,
        logsnr_schedule: str = "cosine",
        logsnr_min: float = LOGSNR_MIN,
        logsnr_max: float = LOGSNR_MAX,
    ) -> None:
        self.teacher = teacher
        self.target_fn = guided_teacher(teacher)
        self.w_range = w_range
        self.logsnr_schedule = logsnr_schedule
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_λ, λ, w) for a batch x: λ ~ p(λ), ε ~ N(0, I), z_λ = α x + σ ε, w ~ U(w_min, w_max)."""
        logsnr = sample_logsnr(x.shape[0], self.logsnr_schedule, logsnr_min=self.logsnr_min,
                               logsnr_max=self.logsnr_max, generator=generator, device=x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        z = diffuse(x=x, eps=eps, logsnr=logsnr)
        w = self.w_range.sample(x.shape[0], generator=generator, device=x.device)
        return z, logsnr, w

    @torch.no_grad()
    def target(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """ε̃_w(z, c) = (1 + w) ε_θ(z, c) - w ε_θ(z): one teacher call of 2B rows, no gradients, in full precision
        (the Trainer's autocast, if on, applies to the student only)."""
        with torch.autocast(z.device.type, enabled=False):
            return self.target_fn(z.float(), logsnr, labels, w).float()

    def __call__(self, student: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        """The Trainer's loss contract (``cfgdiff.training.losses.LossFn``): ``batch.x`` [b, ...] in the data
        range, ``batch.labels`` int64 [b] in [0, K); returns the mean over the batch."""
        x, labels = batch.x, batch.labels
        z, logsnr, w = self.draw(x, generator)
        target = self.target(z, logsnr, labels, w)
        return loss_eps_mse(student(z, logsnr, labels, w).float(), target)
