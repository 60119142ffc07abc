"""Evaluating a distilled student with the project's sweep (``cfgdiff.evaluation.sweep.run_sweep``).

At each w the student is the eps_fn ``student.at(w)``, already guided, so it is sampled without a guidance
wrapper's second row: the sweep runs it at classifier-free weight 0 (one network call of B rows per step, counted
as such), and the rows are marked ``guidance = "distilled"``. Everything else (samplers, per-sample seeds, the
scorer, the written table and grids) is the sweep's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from cfgdiff.distillation.student import Student

DISTILLED = "distilled"  # the ``guidance`` field of a student's sweep rows

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
    parts = [run_sweep(student.at(w), [float(w)], guidance="cfg", weight_schedule=lambda _w: 0.0, **run_sweep_kwargs)
             for w in ws]
    rows = [row for part in parts for row in part.rows]
    for row in rows:
        row.guidance = DISTILLED
    grids: dict[float, Any] = {}
    for part in parts:
        grids.update(part.grids)
    changes: dict[str, Any] = {"rows": rows, "grids": grids}
    if hasattr(parts[0], "points"):
        changes["points"] = {w: p for part in parts for w, p in part.points.items()}
    result = dataclasses.replace(parts[0], **changes)
    result.meta = {**parts[0].meta, "distilled": student.describe(), "w_range": student.w_range.to_json()}
    return result
