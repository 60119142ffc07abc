"""Evaluating a distilled student with the project's sweep (``cfgdiff.evaluation.sweep.run_sweep``).

A student is a w-conditioned model (``cfgdiff.sampling.pipeline.WConditionedEpsFn``): at each w the guided run
samples ``student.at(w)``, already guided, without a guidance wrapper's second row (one network call of B rows per
step, counted as such), and the rows are marked ``guidance = "distilled"``. Everything else (samplers, per-sample
seeds, the scorer, the written table and grids) is the sweep's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cfgdiff.distillation.student import Student
from cfgdiff.sampling.pipeline import DISTILLED

__all__ = ["DISTILLED", "sweep_student"]


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
