"""Evaluation: guidance sweeps and what they are scored and shown with.

* ``sweep``: ``run_sweep`` (sample at each w through the guided-run pipeline, score, one row per w) and
  ``write_sweep`` (results.{csv,md,json}, plots, grids, report.html);
* ``metrics``: FID, IS, the sliced Wasserstein distance, memorisation, the exact guided density, the scorers and
  the cached reference statistics;
* ``features``: the feature networks FID and IS are computed in;
* ``plotting``: the trade-off plots and sample grids; ``report``: the self-contained HTML page.

``from cfgdiff.evaluation import run_sweep`` (the path of the earlier flat layout) still works: the sweep's
names are looked up in ``sweep`` on first use, so importing ``cfgdiff.evaluation.metrics`` does not load the
samplers.
"""

from __future__ import annotations

from typing import Any

_SWEEP_NAMES = ("SweepResult", "SweepRow", "balanced_labels", "best_row", "load_sweep", "markdown_table",
                "run_sweep", "write_sweep", "guided_run")


def __getattr__(name: str) -> Any:
    if name in _SWEEP_NAMES:
        from cfgdiff.evaluation import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'cfgdiff.evaluation' has no attribute {name!r}")
