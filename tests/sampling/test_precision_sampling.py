"""Sampling in bf16 against fp32 on the exact 2-D mixture, with a tolerance derived from bf16's unit roundoff, and
the form a run records.

The "network" is the exact mixture ε (``cfgdiff.core.toy``, float64) followed by an identity linear read-out in
float32. In fp32 the read-out is exact; under bf16 autocast it rounds every component of ε to bf16 (8 significant
bits: unit roundoff u = 2^-8), so each network output carries the error e with |e| <= u |ε| componentwise, and
nothing else differs. To first order the final sample moves by Σ_k G_k e_k, where G_k = ∂x/∂ε_k is the sampler's
sensitivity to the k-th network output (found here by finite differences of the fp32 sampler, row group by row
group and component by component, deterministic DDIM in float64); hence

    |x_bf16 - x_fp32| <= u Σ_k |G_k| |ε_k|   (+ second order),

and the test allows twice that bound. (The bound is not small: without clipping, DDIM's first step turns an
error e in ε at λ_min into σ/α · e in x̂, and σ/α = e^{10} at λ_min = -20; the first-order bound accounts for
it, and clipping x̂, as the commands do for images, removes most of it.)
"""

import pytest
import torch
from torch import nn

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.runtime import precision
from cfgdiff.sampling.pipeline import GuidedRun

U_BF16 = 2.0 ** -8  # bf16 keeps 8 significant bits; round to nearest: relative error <= 2^-8


class ReadOut(nn.Module):
    """The exact mixture ε with an identity linear read-out in float32 (bf16 under autocast: one rounding)."""

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.mixture = mixture
        self.num_classes, self.data_shape = mixture.num_classes, mixture.data_shape
        self.linear = nn.Linear(mixture.dim, mixture.dim, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(mixture.dim))
        self.perturb: tuple[int, int, int, float] | None = None  # (call k, row group g, component c, h)
        self.outputs: list[torch.Tensor] = []
        self.calls = 0

    def forward(self, z, logsnr, labels):
        eps = self.linear(self.mixture(z, logsnr, labels).float()).to(z.dtype)  # [2B, D]
        if self.perturb is not None and self.calls == self.perturb[0]:
            k, g, c, h = self.perturb
            half = eps.shape[0] // 2  # rows [cond samples; uncond samples] (guidance.base: one batched call)
            eps = eps.clone()
            eps[g * half:(g + 1) * half, c] += h
        self.outputs.append(eps.detach().clone())
        self.calls += 1
        return eps


def _sample(net: ReadOut, labels, *, w, steps, precision_name="fp32", perturb=None):
    net.perturb, net.outputs, net.calls = perturb, [], 0
    run = GuidedRun(net, sampler="ddim", steps=steps, batch_size=labels.shape[0], dtype=torch.float64,
                    precision=precision_name)
    return run.samples(labels, w, seed=3), run


def test_bf16_sampling_agrees_with_fp32_within_the_derived_roundoff_bound():
    mixture = GaussianMixture.three_gaussians()
    net = ReadOut(mixture)
    labels = torch.arange(48) % mixture.num_classes
    steps, w = 8, 2.0
    x32, _ = _sample(net, labels, w=w, steps=steps)
    eps32 = list(net.outputs)  # ε_k: [2B, D] per call
    x16, run16 = _sample(net, labels, w=w, steps=steps, precision_name="bf16")
    assert run16.form.precision == "bf16"
    assert all(e.dtype == torch.float64 for e in net.outputs)  # cast back before the solver sees it
    diff = (x16 - x32).abs()  # [B, D]
    assert diff.max() > 0  # bf16 did round something

    h = 1e-6
    bound = torch.zeros_like(x32)
    half = labels.shape[0]
    for k in range(len(eps32)):
        for g in range(2):
            for c in range(mixture.dim):
                x_h, _ = _sample(net, labels, w=w, steps=steps, perturb=(k, g, c, h))
                sensitivity = (x_h - x32) / h  # G_k[:, :, g, c]: [B, D]
                bound += sensitivity.abs() * eps32[k][g * half:(g + 1) * half, c].abs()[:, None]
    bound *= U_BF16
    assert torch.isfinite(bound).all()
    assert (diff <= 2 * bound + 1e-12).all(), (diff / bound).max()


def test_a_run_records_its_form(monkeypatch):
    mixture = GaussianMixture.three_gaussians()
    run = GuidedRun(ReadOut(mixture), sampler="ddim", steps=2, batch_size=4)
    run.samples(torch.arange(4) % 3, 1.0, seed=0)
    assert run.record()["network"] == {"precision": "fp32", "memory_format": "contiguous", "chosen_by": "asked",
                                       "compiled": False}


@pytest.mark.parametrize("has_bf16", [False, True])
def test_auto_in_a_run_measures_only_where_bf16_exists(monkeypatch, cache_dir, has_bf16):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: has_bf16)
    mixture = GaussianMixture.three_gaussians()
    run = GuidedRun(ReadOut(mixture), sampler="ddim", steps=2, batch_size=4, precision="auto")
    assert run.form is not None
    if has_bf16:
        assert run.form.chosen_by in ("measured", "cached") and run.form.precision in ("fp32", "bf16")
        assert list((cache_dir / precision.CACHE_SUBDIR).glob("*.json"))  # the choice was cached
    else:
        assert (run.form.precision, run.form.chosen_by) == ("fp32", "only candidate")
