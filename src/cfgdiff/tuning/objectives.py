"""What a tune optimises, read from one scored sweep row (``cfgdiff.evaluation.sweep.SweepRow``).

``parse_objective`` takes the command line's form:

* ``fid``, ``kid``, ``fid_per_class``: minimise that distance (image data); ``sw``: minimise the sliced
  Wasserstein distance to held-out points (vector data, e.g. the 2-D mixture: a distance to the true conditional
  distributions, so a well-trained model's optimum is w = 0);
* ``precision@recall=R``: maximise precision subject to recall ≥ R (a constraint: a trial below it is
  infeasible and never chosen);
* ``pareto:A,B``: a two-objective front of two metrics (``precision,recall``: both maximised; ``fid,nfe``: FID
  and network evaluations per sample, both minimised). Any row field can be named; ``nfe`` is
  ``nfe_per_sample``; precision, recall, density, coverage and inception_score are maximised, the rest minimised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ALIASES = {"nfe": "nfe_per_sample", "sw": "sliced_wasserstein", "is": "inception_score"}
MAXIMISED = frozenset({"precision", "recall", "density", "coverage", "inception_score", "log_density"})
SINGLE = ("fid", "kid", "fid_per_class", "fid_test", "sw")


@dataclass(frozen=True)
class Objective:
    """The metrics a tune reads (row fields), their directions, and an optional constraint field ≥ bound."""

    text: str
    metrics: tuple[str, ...]
    directions: tuple[str, ...]  # "minimize" / "maximize", one per metric
    constraint: tuple[str, float] | None = None

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    def values(self, row: Any) -> tuple[float, ...]:
        """The objective values of a scored row (ValueError when the row does not have a metric: wrong data kind)."""
        out = []
        for name in self.metrics:
            value = getattr(row, name, None)
            if value is None or not math.isfinite(float(value)):
                raise ValueError(f"the objective needs {name}, which this data's evaluation does not give "
                                 f"(got {value}); image data gives fid, kid, precision, recall; 2-D data sw")
            out.append(float(value))
        return tuple(out)

    def violation(self, row: Any) -> float:
        """How far the constraint is missed (bound - value; <= 0 when it holds, 0 without a constraint)."""
        if self.constraint is None:
            return 0.0
        name, bound = self.constraint
        value = getattr(row, name, None)
        return math.inf if value is None else float(bound - float(value))

    def better(self, a: float, b: float) -> bool:
        """Is a single objective value ``a`` better than ``b``?"""
        return a > b if self.directions[0] == "maximize" else a < b


# the row fields each kind of data's evaluation gives (cfgdiff.evaluation.metrics.scorers)
AVAILABLE = {
    "images": frozenset({"fid", "fid_test", "kid", "fid_per_class", "precision", "recall", "density", "coverage",
                         "inception_score", "nfe_per_sample", "memorised"}),
    "vectors": frozenset({"sliced_wasserstein", "precision", "recall", "density", "coverage", "log_density",
                          "nfe_per_sample"}),
}


def check_objective(objective: Objective, kind: str) -> None:
    """ValueError (one line) when the objective needs a metric that ``kind`` data ("images"/"vectors") has not."""
    available = AVAILABLE.get(kind, frozenset())
    needed = [*objective.metrics, *([objective.constraint[0]] if objective.constraint else [])]
    missing = [m for m in needed if m not in available]
    if missing:
        what = "image" if kind == "images" else "vector (2-D)"
        raise ValueError(f"objective {objective.text!r} needs {', '.join(missing)}, which {what} data are not scored "
                         f"by; they give {', '.join(sorted(available))}")


def _metric(name: str) -> str:
    return ALIASES.get(name.strip(), name.strip())


def _direction(metric: str) -> str:
    return "maximize" if metric in MAXIMISED else "minimize"


def parse_objective(text: str) -> Objective:
    """The objective of ``--objective TEXT`` (module docstring); ValueError (one line) otherwise."""
    text = text.strip()
    if text.startswith("pareto:"):
        names = [_metric(n) for n in text.removeprefix("pareto:").split(",") if n.strip()]
        if len(names) != 2 or names[0] == names[1]:
            raise ValueError(f"pareto takes two different metrics, e.g. pareto:precision,recall; got {text!r}")
        return Objective(text, tuple(names), tuple(_direction(n) for n in names))
    if text.startswith("precision@"):
        key, sep, bound = text.removeprefix("precision@").partition("=")
        try:
            if key.strip() != "recall" or not sep:
                raise ValueError
            value = float(bound)
        except ValueError:
            raise ValueError(f"write the constrained objective as precision@recall=R, e.g. precision@recall=0.5; "
                             f"got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"the recall bound R must lie in [0, 1], got {value:g}")
        return Objective(text, ("precision",), ("maximize",), constraint=("recall", value))
    if text in SINGLE:
        metric = _metric(text)
        return Objective(text, (metric,), (_direction(metric),))
    raise ValueError(f"unknown objective {text!r}; choose from {', '.join(SINGLE)}, precision@recall=R, "
                     "pareto:A,B (e.g. pareto:precision,recall or pareto:fid,nfe)")
