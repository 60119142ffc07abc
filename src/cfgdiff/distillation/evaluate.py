"""Evaluating a distilled student with the project's sweep (``cfgdiff.evaluation.sweep.run_sweep``).

A student is a w-conditioned model (``cfgdiff.sampling.pipeline.WConditionedEpsFn``): at each w the guided run
samples ``student.at(w)``, already guided, without a guidance wrapper's second row (one network call of B rows per
step, counted as such), and the rows are marked ``guidance = "distilled"``. Everything else (samplers, per-sample
seeds, the scorer, the written table and grids) is the sweep's own.

``fit_by_w`` measures a stage-1 student without sampling: on held-out data (x, c) and fixed draws of (λ, ε), its
error against the guided teacher at each w of a grid,

    mse(w) = E ||ε_η(z_λ, λ, c, w) - ε̃_w(z_λ, c)||² / D,      guidance(w) = E ||ε̃_w - ε_θ(z_λ, c)||² / D,

(D the data's dimension; the same (x, c, λ, ε) at every w), and their ratio, the error relative to what guidance
adds at w. It says where in the w range a student fits its teacher worst, and whether more training still lowers
that error (run it on a run's step-numbered checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cfgdiff.core.contract import EpsFn
from cfgdiff.distillation.guidance import GuidanceDistillationLoss
from cfgdiff.distillation.student import Student
from cfgdiff.guidance import combine_cfg, eval_cond_uncond
from cfgdiff.sampling.pipeline import DISTILLED

__all__ = ["DISTILLED", "WFit", "fit_by_w", "sweep_student"]


@dataclass(frozen=True)
class WFit:
    """A student's held-out error at one w (``fit_by_w``): ``mse`` = E||ε_η - ε̃_w||²/D ± ``mse_se`` (its standard
    error over the rows), ``guidance`` = E||ε̃_w - ε_θ(z, c)||²/D, and ``relative`` = mse / guidance (None at w = 0,
    where guidance adds nothing)."""

    w: float
    mse: float
    mse_se: float
    guidance: float
    relative: float | None


@torch.no_grad()
def fit_by_w(
    student: Student,
    teacher: EpsFn,
    x: torch.Tensor,
    labels: torch.Tensor,
    ws: Sequence[float],
    *,
    generator: torch.Generator,
    batch_size: int = 256,
    logsnr_schedule: str = "cosine",
) -> list[WFit]:
    """The student's error against its guided teacher at each w (module docstring), on the rows (x [N, ...],
    labels [N]): (λ, ε) are drawn once per row from ``generator`` as stage 1's loss draws them
    (``GuidanceDistillationLoss.draw``: λ from the teacher's ``logsnr_schedule``), and the same (z_λ, λ) serve
    every w. The teacher runs once per chunk (one call of 2B rows, in full precision like the loss's target); every
    w combines that pair, ε̃_w = ε_c + w (ε_c - ε_u), so guidance(w) = w² E||ε_c - ε_u||²/D.
    ``WRangeError`` for a w outside the student's range."""
    ws = [student.w_range.check(w) for w in ws]
    loss = GuidanceDistillationLoss(teacher, student.w_range, logsnr_schedule=logsnr_schedule)
    device = next(student.network.parameters()).device
    student_eps = student.w_eps_fn()
    errors: dict[float, list[torch.Tensor]] = {w: [] for w in ws}
    guidance_sq: list[torch.Tensor] = []  # ||ε_c - ε_u||²/D per row
    for start in range(0, x.shape[0], batch_size):
        xb, cb = x[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
        z, logsnr, _ = loss.draw(xb, generator)
        with torch.autocast(z.device.type, enabled=False):
            eps_cond, eps_uncond = (e.float() for e in eval_cond_uncond(teacher, z.float(), logsnr, cb))
        guidance_sq.append(((eps_cond - eps_uncond) ** 2).flatten(1).mean(1).cpu())
        for w in ws:
            target = combine_cfg(eps_cond, eps_uncond, w)
            output = student_eps(z, logsnr, cb, torch.full((xb.shape[0],), w, device=device)).float()
            errors[w].append(((output - target) ** 2).flatten(1).mean(1).cpu())
    difference_sq = float(torch.cat(guidance_sq).double().mean())
    fits = []
    for w in ws:
        rows = torch.cat(errors[w]).double()
        mse, guidance = float(rows.mean()), w * w * difference_sq
        se = float(rows.std() / rows.numel() ** 0.5) if rows.numel() > 1 else float("nan")
        fits.append(WFit(w, mse, se, guidance, mse / guidance if guidance > 0 else None))
    return fits


def sweep_student(student: Student, ws: Sequence[float], **run_sweep_kwargs: Any):
    """``run_sweep`` for a student: ``student.at(w)`` at every w (``WRangeError`` before any sampling when a w
    lies outside its range), one row per w with ``guidance == "distilled"``; returns a ``SweepResult``."""
    from cfgdiff.evaluation.sweep import run_sweep

    for w in ws:
        student.w_range.check(w)
    for name in ("guidance", "guidance_params", "log_prob_fn", "weight_schedule"):
        if run_sweep_kwargs.get(name) not in (None, "cfg", {}):
            raise ValueError(f"a distilled student is already guided: {name} does not apply")
        run_sweep_kwargs.pop(name, None)
    return run_sweep(student, [float(w) for w in ws], **run_sweep_kwargs)
