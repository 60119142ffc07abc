"""How well samples of a composition follow each of its terms, by a classifier of the data's classes.

For a composition of terms (c_i, w_i) (``cfgdiff.guidance.compose``) and N samples x_j, the adherence to term i is
the mean probability a clean-image classifier of the data's K classes gives class c_i, with its standard error:

    p̄_i = (1/N) Σ_j p(c_i | x_j),   se_i = std_j p(c_i | x_j) / √N   (std with 1/(N - 1))

A term of positive weight asks for its class (p̄_i high), one of negative weight steers away from it (p̄_i low).
The probabilities must be over the data's classes (cfgdiff's feature classifier, the shipped digits classifier);
Inception's ImageNet labels are not, and then there is no adherence to report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cfgdiff.guidance.compose import Terms, describe_terms


def term_key(term: tuple[int, float]) -> str:
    """The name of one term in a row's mappings: "CLASS:WEIGHT" as ``describe_terms`` writes it, e.g. "8:-1"."""
    return describe_terms([term])


def term_probabilities(probs: np.ndarray, terms: Terms) -> dict[str, Any]:
    """``{"term_prob": {key: p̄_i}, "term_prob_std": {key: se_i}}`` over the rows of ``probs`` [N, K] (module
    docstring), keyed by ``term_key``; se_i is None for N < 2."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"term probabilities need class probabilities [N, K], got shape {p.shape}")
    means: dict[str, float] = {}
    errors: dict[str, float | None] = {}
    for c, weight in terms:
        if not 0 <= int(c) < p.shape[1]:
            raise ValueError(f"class {c} outside the classifier's {p.shape[1]} classes")
        column = p[:, int(c)]  # [N]: p(c_i | x_j)
        key = term_key((int(c), float(weight)))
        means[key] = float(column.mean())
        errors[key] = float(column.std(ddof=1) / math.sqrt(column.size)) if column.size >= 2 else None
    return {"term_prob": means, "term_prob_std": errors}
