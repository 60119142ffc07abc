"""The Inception Score over a classifier's softmax (Salimans et al. 2016).

    IS = exp(E_x KL(p(y | x) || p(y))),  p(y) = E_x p(y | x),  mean ± std over ``splits`` disjoint splits
"""

from __future__ import annotations

import numpy as np
import torch


def inception_score(probs: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over ``splits`` disjoint splits of exp(E_x KL(p(y|x) || p(y))), p(y) the split's mean.

    ``probs``: [N, K] class probabilities (rows summing to 1). Uniform predictions give 1; confident
    predictions spread evenly over K classes give K. ``splits`` is capped at N.
    """
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    p = p.astype(np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"probs must be [N, K] with N >= 1, got shape {p.shape}")
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    scores = []
    for part in np.array_split(p, min(splits, p.shape[0])):
        p_y = part.mean(axis=0, keepdims=True)  # [1, K]
        # KL with 0 log 0 = 0
        kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1.0)) - np.log(np.where(p_y > 0, p_y, 1.0))),
                      0.0).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
