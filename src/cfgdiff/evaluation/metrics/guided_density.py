"""The exact guided target of a Gaussian mixture, normalised: log p̃_w(x | c) for scoring 2-D samples.

    p̃_w(x | c) = p(x | c) p(c | x)^w / Z_c(w),    Z_c(w) = ∫ p(x | c) p(c | x)^w dx

(the paper's Eq. 6 tilt at the data end, Figure 2). ``GaussianMixture.guided_log_density`` gives the
unnormalised log; Z_c(w) has no closed form for w ≠ 0, so it is computed by the midpoint rule on a grid over a
square that grows until the unnormalised density on its border is below 1e-12 of its peak (the mass outside is
then negligible). For w = 0, Z = 1 exactly (checked in the tests). With the normalised target:

* the mean log-density of samples, mean_i log p̃_w(x_i | c_i), is -(cross-entropy of the samples' law q to
  p̃_w); a perfect sampler of p̃_w reaches E_{p̃_w}[log p̃_w] = -H(p̃_w) (``negative_entropy``), also on the
  grid. Mean log-density is not a distance: samples piled on the modes score above -H; read it with the sliced
  Wasserstein distance.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cfgdiff.core.toy import GaussianMixture

GRID_SIZE = 400
BORDER_RATIO = 1e-12  # the unnormalised density on the grid's border, relative to its peak, must be below this


class GuidedDensity:
    """Normalised log p̃_w(x | c) of every class of a 2-D mixture at one guidance weight w."""

    def __init__(self, mixture: GaussianMixture, w: float, *, grid_size: int = GRID_SIZE) -> None:
        if mixture.dim != 2:
            raise ValueError(f"the grid normalisation needs a 2-D mixture, got dim = {mixture.dim}")
        if not math.isfinite(w):
            raise ValueError(f"w must be finite, got {w}")
        self.mixture, self.w = mixture, float(w)
        centre = mixture.means.mean(dim=0)
        half = float((mixture.means - centre).abs().max() + 6.0 * mixture.stds.max())
        for _ in range(12):
            log_z, negent, border = self._on_grid(centre, half, grid_size)
            if border < math.log(BORDER_RATIO):
                break
            half *= 1.5
        else:
            raise ValueError(f"the guided density at w = {w} does not decay inside the grid")
        self.log_normaliser = log_z  # [K] log Z_c(w)
        self.negative_entropy = negent  # [K] E_{p̃_w(·|c)} log p̃_w(x | c)
        self.half_width = half

    def _on_grid(self, centre: torch.Tensor, half: float, size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        step = 2.0 * half / size
        axis = -half + (torch.arange(size, dtype=torch.float64) + 0.5) * step
        gx, gy = torch.meshgrid(centre[0] + axis, centre[1] + axis, indexing="xy")
        points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # [G², 2]
        offset = (points - centre).abs()  # [G², 2]
        on_border = (offset > half - step).any(dim=1)  # the outermost ring of cells
        log_z, negent, border = [], [], -math.inf
        for c in range(self.mixture.num_classes):
            labels = torch.full((points.shape[0],), c, dtype=torch.long)
            with torch.no_grad():
                log_d = self.mixture.guided_log_density(points, labels, self.w)  # [G²] unnormalised
            peak = log_d.max()
            lz = torch.logsumexp(log_d, dim=0) + math.log(step * step)  # midpoint rule
            density = torch.exp(log_d - lz)  # normalised on the grid
            log_z.append(lz)
            negent.append((density * (log_d - lz)).sum() * step * step)
            border = max(border, float(log_d[on_border].max() - peak))
        return torch.stack(log_z), torch.stack(negent), border

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p̃_w(x | c) [N] for points x [N, 2] and labels c [N] (float64)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        labels = torch.as_tensor(labels, dtype=torch.long)
        with torch.no_grad():
            return self.mixture.guided_log_density(x, labels, self.w) - self.log_normaliser[labels]

    def target_mean(self, labels: torch.Tensor) -> float:
        """mean_i E_{p̃_w(·|c_i)} log p̃_w: what a perfect sampler's mean log-density is, for these labels."""
        return float(self.negative_entropy[torch.as_tensor(labels, dtype=torch.long)].mean())


def mean_log_density(density: GuidedDensity, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error) of log p̃_w(x_i | c_i) over the samples."""
    values = density.log_prob(x, labels).numpy()
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), se
