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
    every w. ``WRangeError`` for a w outside the student's range."""
    ws = [student.w_range.check(w) for w in ws]
    loss = GuidanceDistillationLoss(teacher, student.w_range, logsnr_schedule=logsnr_schedule)
    device = next(student.network.parameters()).device
    student_eps = student.w_eps_fn()
    per_row: dict[float, list[torch.Tensor]] = {w: [] for w in ws}
    guide: dict[float, list[torch.Tensor]] = {w: [] for w in ws}
    for start in range(0, x.shape[0], batch_size):
        xb, cb = x[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
        z, logsnr, _ = loss.draw(xb, generator)
        cond = loss.target(z, logsnr, cb, torch.zeros(xb.shape[0], device=device))  # ε̃_0 = ε_θ(z, c)
        for w in ws:
            w_rows = torch.full((xb.shape[0],), w, device=device)
            target = loss.target(z, logsnr, cb, w_rows)
            output = student_eps(z, logsnr, cb, w_rows).float()
            per_row[w].append(((output - target) ** 2).flatten(1).mean(1).cpu())
            guide[w].append(((target - cond) ** 2).flatten(1).mean(1).cpu())
    fits = []
    for w in ws:
        errors, guidance = torch.cat(per_row[w]).double(), float(torch.cat(guide[w]).double().mean())
        mse = float(errors.mean())
        se = float(errors.std() / errors.numel() ** 0.5) if errors.numel() > 1 else float("nan")
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
