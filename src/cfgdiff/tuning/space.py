"""What ``cfgdiff tune`` searches: the guidance weight w, a method's own parameters, the guidance interval's bounds
and, if asked, the sampler's steps, each a ``Range``.

Defaults (each overridable, ``--search NAME=LOW:HIGH``): w in [0, 4] (CFG++: [-1, 0], its λ = w + 1 in [0, 1]);
rescale φ in [0, 1]; thresholding's percentile in [90, 100]; APG's η in [0, 1], r in [0.5, 20] (log) and β in
[-0.9, 0]; CFG-Zero*'s zero-init steps in {0, ..., 3}; adaptive guidance's γ in [0.995, 1]; linear-ag's share of
full steps f in [0.2, 1]; PAG's and skip-layer guidance's scale s in [0, 6] (their layers are given, not
searched). Composed conditions are not tuned (their classes are the question, not a parameter).
The interval (``tune_interval``) searches σ_lo in [0.02, 2] and σ_hi in [2, 80] (both log; disjoint, so
σ_lo < σ_hi always holds). A parameter fixed by the caller (a flag such as ``--apg-r 2.5``) is not searched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cfgdiff.guidance import guidance_method

W_RANGES: dict[str, tuple[float, float]] = {"cfgpp": (-1.0, 0.0)}  # per method; the rest: DEFAULT_W_RANGE
DEFAULT_W_RANGE = (0.0, 4.0)
INTERVAL_NAMES = ("sigma_lo", "sigma_hi")
STEPS_NAME = "steps"


@dataclass(frozen=True)
class Range:
    """One searched dimension: a float (log-uniform if ``log``) or an integer in [low, high]."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"empty search range for {self.name}: [{self.low:g}, {self.high:g}] (need low < high)")
        if self.log and self.low <= 0:
            raise ValueError(f"{self.name} is searched on a log scale and needs low > 0, got {self.low:g}")

    def suggest(self, trial: Any) -> float | int:
        """The value an Optuna trial draws for this dimension."""
        if self.integer:
            return int(trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log))
        return float(trial.suggest_float(self.name, self.low, self.high, log=self.log))

    def describe(self) -> str:
        kind = "int" if self.integer else ("log" if self.log else "float")
        return f"{self.name} in [{self.low:g}, {self.high:g}] ({kind})"


METHOD_RANGES: dict[str, tuple[Range, ...]] = {
    "rescale": (Range("phi", 0.0, 1.0),),
    "thresholding": (Range("percentile", 90.0, 100.0),),
    "apg": (Range("eta", 0.0, 1.0), Range("r", 0.5, 20.0, log=True), Range("beta", -0.9, 0.0)),
    "cfg-zero": (Range("zero_init_steps", 0, 3, integer=True),),
    "adaptive": (Range("gamma", 0.995, 1.0),),  # cos(ε_c, ε̃) is within 1e-3 of 1 on digits from the first step
    "linear-ag": (Range("full_fraction", 0.2, 1.0),),
    "pag": (Range("scale", 0.0, 6.0),),  # the layers are the caller's (--pag-layers), not searched
    "skip-layer": (Range("scale", 0.0, 6.0),),
}
INTERVAL_RANGES = (Range("sigma_lo", 0.02, 2.0, log=True), Range("sigma_hi", 2.0, 80.0, log=True))


def parse_search(text: str) -> dict[str, tuple[float, float]]:
    """``"w=0:4,phi=0.2:0.9"`` -> {"w": (0, 4), "phi": (0.2, 0.9)} (ValueError naming the bad part)."""
    out: dict[str, tuple[float, float]] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, bounds = part.partition("=")
        low, colon, high = bounds.partition(":")
        try:
            if not (sep and colon):
                raise ValueError
            out[name.strip()] = (float(low), float(high))
        except ValueError:
            raise ValueError(f"search ranges take NAME=LOW:HIGH, comma-separated; got {part!r}") from None
    if not out:
        raise ValueError("search ranges take NAME=LOW:HIGH, comma-separated; got nothing")
    return out


def search_space(method: str, *, fixed: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, tuple[float, float]] | None = None, interval: bool = False,
                 steps: tuple[int, int] | None = None) -> list[Range]:
    """The ranges searched for ``method``: w, its parameters not in ``fixed``, the interval bounds (``interval``),
    the steps (``steps`` = (low, high)); ``overrides`` replace default bounds (ValueError for a name that is not
    searched, an empty range, or interval ranges that overlap)."""
    guidance_method(method)  # ValueError for an unknown method
    fixed = dict(fixed or {})
    w_low, w_high = W_RANGES.get(method, DEFAULT_W_RANGE)
    ranges = [Range("w", w_low, w_high)]
    ranges += [r for r in METHOD_RANGES.get(method, ()) if r.name not in fixed]
    if interval:
        ranges += list(INTERVAL_RANGES)
    if steps is not None:
        ranges.append(Range(STEPS_NAME, int(steps[0]), int(steps[1]), integer=True))
    by_name = {r.name: r for r in ranges}
    for name, (low, high) in (overrides or {}).items():
        if name not in by_name:
            raise ValueError(f"{name} is not searched for guidance {method}; searched: {', '.join(by_name)}"
                             + (" (the interval bounds need --tune-interval)" if name in INTERVAL_NAMES else ""))
        old = by_name[name]
        by_name[name] = Range(name, low, high, log=old.log, integer=old.integer)
    if interval and not by_name["sigma_lo"].high <= by_name["sigma_hi"].low:
        raise ValueError("sigma_lo's range must lie below sigma_hi's (so that every interval has sigma_lo < sigma_hi)")
    return [by_name[r.name] for r in ranges]


def split_params(values: Mapping[str, Any], space: Sequence[Range]) -> dict[str, Any]:
    """A trial's values sorted into {"w", "params" (the method's), "interval" ((σ_lo, σ_hi) or None), "steps"}."""
    names = {r.name for r in space}
    method_params = {k: v for k, v in values.items()
                     if k in names and k not in ("w", STEPS_NAME, *INTERVAL_NAMES)}
    interval = ((float(values["sigma_lo"]), float(values["sigma_hi"])) if "sigma_lo" in values else None)
    return {"w": float(values["w"]), "params": method_params, "interval": interval,
            "steps": int(values[STEPS_NAME]) if STEPS_NAME in values else None}
