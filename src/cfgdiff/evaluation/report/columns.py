"""Which columns a sweep's table shows, under which headers, formatted how.

Rows are read generically from ``results.json``: the fields cfgdiff's evaluation writes today get a header
and a format of their own (the FID and IS headers are the metric names the sweep recorded, e.g. "FID
(digits-classifier features)"), and any other field is shown too, under its own name, so a field added later
(``fid_test``, a memorisation score, a guidance method's parameter) appears without an edit here. A field
``KEY_std`` next to a numeric ``KEY`` is its spread and is shown in KEY's cell as "value ± std".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STD_SUFFIX = "_std"

# key -> header, for the fields evaluation.SweepRow has today (FID and IS headers come from the sweep's meta)
KNOWN_HEADERS = {
    "w": "w",
    "n": "N",
    "steps": "steps",
    "sampler": "sampler",
    "seed": "seed",
    "guidance": "guidance",
    "nfe_per_sample": "NFE / sample",
    "classifier_evals_per_sample": "classifier fwd+bwd / sample",
    "seconds_per_sample": "ms / sample",
    "memorised": "memorised",
    "sliced_wasserstein": "SW_2 to held-out points",
    "sliced_wasserstein_per_class": "SW_2 per class",
    "log_density": "mean log p̃_w(x|c)",
    "log_density_target": "-H(p̃_w) (exact sampler)",
    "precision": "precision",
    "recall": "recall",
    "density": "density",
    "coverage": "coverage",
    "kid": "KID",
    "term_prob": "p(c_i | x) per term",  # a composition: "CLASS:WEIGHT" -> mean probability of the term's class
    "term_prob_std": "p(c_i | x) per term, standard error",
}
# these first, in this order; the rest in the rows' order
LEADING = ("w", "fid", "fid_test", "inception_score", "sliced_wasserstein", "log_density", "precision", "recall",
           "density", "coverage", "kid", "fid_per_class", "memorised", "n")
INTEGER_KEYS = frozenset({"n", "steps", "seed"})
NOT_AN_AXIS = frozenset({"seed"})  # numeric, but nothing to plot against
# the trade-off plot's default axes: the first of each list that has a number in some row
DEFAULT_Y = ("fid", "sliced_wasserstein", "fid_test")
DEFAULT_X = ("inception_score", "log_density", "w")
# the second plot: precision (y) against recall (x), one point per w, when some row has both
PR_AXES = ("recall", "precision")
# row field -> the meta field holding its floor (real data scored the same way), drawn as a dashed line
FLOOR_KEYS = {"fid": "fid_floor", "fid_test": "fid_test_floor", "sliced_wasserstein": "sw_floor"}


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: non-finite floats become None (drawn as gaps, shown as "–")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def _metric_format(value: float) -> str:
    return f"{value:.3f}"


def _general_format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(v is None or is_number(v) for v in value):
        return " / ".join(_general_format(v if not isinstance(v, float) else float(f"{v:.3g}")) for v in value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def format_value(key: str, value: Any) -> str:
    """The text a cell shows for ``value`` of field ``key`` (the raw value goes in the cell's data-value)."""
    if key.startswith("term_prob") and isinstance(value, dict):  # a composition's terms: "3:+1 0.931, 8:-1 0.020"
        return ", ".join(f"{k} {_metric_format(float(v)) if is_number(v) else '–'}" for k, v in value.items())
    if value is None or not is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        return _general_format(value)
    if key == "w" or (key.endswith("_per_sample") and key != "seconds_per_sample"):
        return f"{value:g}"
    if key == "seconds_per_sample":
        return f"{value * 1e3:.2f}"
    if key in INTEGER_KEYS and float(value).is_integer():
        return str(int(value))
    if key.startswith(("fid", "inception_score", "sliced_wasserstein", "log_density", "precision", "recall",
                       "density", "coverage")):
        return _metric_format(float(value))
    if key == "memorised":
        return f"{100.0 * value:.1f} %"
    return _general_format(value)


@dataclass(frozen=True)
class Column:
    """One table column: the row field ``key``, its header, and the field holding its spread (if any)."""

    key: str
    header: str
    std_key: str | None = None
    numeric: bool = False

    def text(self, row: Mapping[str, Any]) -> str:
        return format_value(self.key, row.get(self.key))

    def std_text(self, row: Mapping[str, Any]) -> str | None:
        if self.std_key is None or not is_number(row.get(self.std_key)):
            return None
        return format_value(self.key, row[self.std_key])


def header_for(key: str, meta: Mapping[str, Any]) -> str:
    """The header of field ``key``: the metric names the sweep recorded for FID and IS, else a known name, else
    the key itself (underscores as spaces)."""
    fid_name = str(meta.get("fid_name") or "FID")
    is_name = str(meta.get("is_name") or "IS")
    if key == "fid":
        return fid_name
    if key == "inception_score":
        return is_name
    if key == "fid_test":
        return f"{fid_name}, vs test split"
    if key == "fid_per_class":
        return f"{fid_name}, per class (mean)"
    if key in ("precision", "recall") and meta.get("prdc_k") is not None:
        return f"{key} (k = {meta['prdc_k']})"
    if key in ("density", "coverage") and meta.get("density_k") is not None:
        return f"{key} (k = {meta['density_k']})"
    if key == "sliced_wasserstein" and meta.get("sw_name"):
        return str(meta["sw_name"])
    if key == "log_density" and meta.get("log_density_name"):
        return str(meta["log_density_name"])
    if key in KNOWN_HEADERS:
        return KNOWN_HEADERS[key]
    if key.startswith("fid_"):
        return f"{fid_name} ({key[4:].replace('_', ' ')})"
    return key.replace("_", " ")


def table_columns(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[Column]:
    """The columns for these rows: every field some row has a value for (a field that is None in every row, e.g.
    FID on 2-D data, is left out), its ``_std`` partner folded into it."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and v is not None]
    numeric = {k for k in keys if any(is_number(r.get(k)) for r in rows)}
    std_of = {k: f"{k}{STD_SUFFIX}" for k in keys if k in numeric and f"{k}{STD_SUFFIX}" in numeric}
    folded = set(std_of.values())
    ordered = [k for k in LEADING if k in keys] + [k for k in keys if k not in LEADING]
    return [Column(k, header_for(k, meta), std_of.get(k), k in numeric) for k in ordered if k not in folded]


def axis_columns(columns: Sequence[Column]) -> list[Column]:
    """The numeric columns a plot axis may show (``seed`` excepted)."""
    return [c for c in columns if c.numeric and c.key not in NOT_AN_AXIS]


def merge_columns(per_sweep: Sequence[Sequence[Column]]) -> list[Column]:
    """One column list for several sweeps: the first sweep's columns, then any others' new ones."""
    merged: dict[str, Column] = {}
    for columns in per_sweep:
        for c in columns:
            if c.key not in merged or (c.std_key and not merged[c.key].std_key):  # prefer the one with a spread
                merged[c.key] = c
    return list(merged.values())


MetaFormatter = Callable[[Any], str]


def _metric_or_dash(value: Any) -> str:
    return _metric_format(value) if is_number(value) else "–"


# meta key -> (label, formatter), shown in this order; other meta entries follow under their own names
KNOWN_META: dict[str, tuple[str, MetaFormatter]] = {
    "command": ("command", str),
    "run_dir": ("run", str),
    "train_step": ("training step", str),
    "p_uncond": ("p_uncond", _general_format),
    "fid_name": ("FID metric", str),
    "is_name": ("IS metric", str),
    "fid_floor": ("FID floor (real images vs training split)", _metric_or_dash),
    "fid_test_floor": ("FID floor vs test split", _metric_or_dash),
    "sw_floor": ("SW_2 floor", _metric_or_dash),
    "floor_count": ("images in the floor", str),
    "reference_count": ("reference images", str),
    "reference_is": ("IS of the reference images", _metric_or_dash),
    "feature_network": ("feature network", str),
    "seconds": ("sweep wall time", lambda v: f"{v:.0f} s" if is_number(v) else str(v)),
    "n": ("samples per w (N)", str),
    "guidance": ("guidance", str),
    "guidance_params": ("guidance parameters", _general_format),
    "test_is": ("IS of the held-out test images", _metric_or_dash),
    "memorisation_test_share": ("near-copies among held-out test images",
                                lambda v: f"{100.0 * v:.1f} %" if is_number(v) else "–"),
    "prdc_k": ("precision/recall k", str),
    "density_k": ("density/coverage k", str),
    "prdc_real": ("real set of precision/recall/density/coverage", str),
    "kid_subsets": ("KID subsets", str),
    "kid_subset_size": ("KID subset size", str),
    "kid_real": ("real set of KID", str),
}


def meta_items(meta: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, text) for every meta entry that has a value: the known ones first, the rest under their own
    names. ``K_std`` is folded into K's text ("value ± std"), and so is ``K_definition`` (in brackets)."""
    folded = {f"{k}{STD_SUFFIX}" for k in meta if is_number(meta.get(k)) and is_number(meta.get(f"{k}{STD_SUFFIX}"))}
    folded |= {f"{k}_definition" for k in meta if isinstance(meta.get(f"{k}_definition"), str) and k in meta}
    out = []
    for k in [*(k for k in KNOWN_META if k in meta), *(k for k in meta if k not in KNOWN_META)]:
        value = meta[k]
        if k in folded or value is None or (isinstance(value, (dict, list)) and not value):
            continue
        label, fmt = KNOWN_META.get(k, (k.replace("_", " "), _general_format))
        text = fmt(value)
        if f"{k}{STD_SUFFIX}" in folded:
            text += f" ± {fmt(meta[f'{k}{STD_SUFFIX}'])}"
        if isinstance(meta.get(f"{k}_definition"), str):
            text += f" ({meta[f'{k}_definition']})"
        out.append((k, label, text))
    return out
