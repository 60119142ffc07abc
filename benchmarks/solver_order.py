"""Measured convergence order of the deterministic solvers on the exact three-Gaussian mixture (not a test).

Per-sample ODE error against a 1000-step DPM-Solver++(3M) solution from the same initial noise, on the uniform
λ grid at 8, 16, 32, 64 steps; the order is the least-squares slope of -log(error) against log(steps).
Run from the repository root: ``PYTHONPATH=. python benchmarks/solver_order.py``.
"""

import torch

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.sampling.solvers import sample_ddim, sample_dpmpp_2m, sample_dpmpp_3m, sample_heun
from tests.helpers import measured_order


def main() -> None:
    gm = GaussianMixture.three_gaussians()
    labels = torch.arange(3).repeat_interleave(100)
    z0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = sample_dpmpp_3m(gm, (300, 2), labels, steps=1000, z=z0, dtype=torch.float64, grid="uniform")
    print("| sampler | measured order | error at 8 | 16 | 32 | 64 steps |")
    print("|---|---|---|---|---|---|")
    for sampler in (sample_ddim, sample_dpmpp_2m, sample_dpmpp_3m, sample_heun):
        order, errors = measured_order(sampler, gm, z0, labels, reference)
        print(f"| {sampler.__name__} | {order:.2f} | " + " | ".join(f"{e:.2e}" for e in errors) + " |")


if __name__ == "__main__":
    main()
