"""What the samplers hand an eps_fn and which formulas they step with: core's, called, not restated.

* the ancestral step is the paper's posterior formula: the sampler calls ``core.diffusion.posterior_coefficients`` and
  ``reverse_std``, and its z' equals ``posterior_mean`` + sqrt(``reverse_variance``) ξ computed here from the same ξ;
* the step's λ reaches every guidance wrapper, nested at any depth, as a Python float (``HostLogsnrEpsFn``): no
  wrapper reads the λ tensor, which is checked by lying in the tensor and by forbidding tensor-to-float reads.
"""

import math
from unittest import mock

import pytest
import torch

from cfgdiff.core import diffusion
from cfgdiff.core.contract import HostLogsnrEpsFn, HostLogsnrPairedEpsFn, PairedEpsFn, TrajectoryEpsFn
from cfgdiff.core.diffusion import posterior_mean, predict_x_from_eps, reverse_variance
from cfgdiff.guidance import (
    apg,
    autoguidance,
    cfg,
    cfg_zero_star,
    cfgpp,
    classifier_guidance,
    dynamic_thresholding,
    guidance_interval,
    rescaled_cfg,
)
from cfgdiff.sampling import solvers
from cfgdiff.sampling.solvers import SAMPLERS, sample_ancestral
from tests.helpers import RowNet


class TanhEps:
    """A fixed eps_fn ε̂ = tanh(z) + 0.1 (c + 1), recording the z of every call."""

    num_classes = 3

    def __init__(self):
        self.seen = []

    def __call__(self, z, logsnr, labels):
        self.seen.append(z.clone())
        return torch.tanh(z) + 0.1 * (labels.to(z.dtype)[:, None] + 1.0)


@pytest.mark.parametrize("v_interp", [0.0, 0.3, 1.0])
def test_the_ancestral_step_is_the_posterior_formula_of_core(monkeypatch, v_interp):
    coefficients = mock.Mock(wraps=diffusion.posterior_coefficients)
    std = mock.Mock(wraps=diffusion.reverse_std)
    monkeypatch.setattr(solvers, "posterior_coefficients", coefficients)
    monkeypatch.setattr(solvers, "reverse_std", std)
    eps_fn = TanhEps()
    labels = torch.tensor([0, 1, 2])
    grid = torch.tensor([-4.0, 1.0, 6.0], dtype=torch.float64)
    x_out = sample_ancestral(eps_fn, (3, 2), labels, grid=grid, v_interp=v_interp, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(0))
    # the sampler asked core for the step λ = -4 → λ' = 1 (and for no other: the last step returns x̂)
    coefficients.assert_called_once_with(logsnr=-4.0, logsnr_next=1.0)
    std.assert_called_once_with(logsnr=-4.0, logsnr_next=1.0, v_interp=v_interp)
    # replay the generator: z_0, then the step's ξ
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    xi = torch.randn(3, 2, generator=g, dtype=torch.float64)
    assert torch.equal(eps_fn.seen[0], z0)
    eps0 = torch.tanh(z0) + 0.1 * (labels.to(torch.float64)[:, None] + 1.0)
    x0 = predict_x_from_eps(z=z0, eps=eps0, logsnr=-4.0)
    var = reverse_variance(logsnr=torch.tensor(-4.0, dtype=torch.float64),
                           logsnr_next=torch.tensor(1.0, dtype=torch.float64), v_interp=v_interp)
    z1 = posterior_mean(z=z0, x=x0, logsnr=-4.0, logsnr_next=1.0) + torch.sqrt(var) * xi
    torch.testing.assert_close(eps_fn.seen[1], z1, rtol=1e-12, atol=1e-12)
    eps1 = torch.tanh(z1) + 0.1 * (labels.to(torch.float64)[:, None] + 1.0)
    torch.testing.assert_close(x_out, predict_x_from_eps(z=z1, eps=eps1, logsnr=1.0), rtol=1e-10, atol=1e-10)


class Recorder:
    """A weight schedule that records the λ it is asked at (a guidance interval's ``guided`` as well)."""

    def __init__(self, w):
        self.w = w
        self.seen = []

    def __call__(self, logsnr):
        assert isinstance(logsnr, float)
        self.seen.append(logsnr)
        return self.w


def _log_prob(z, logsnr, labels):
    return -(z - labels.to(z.dtype)[:, None]).pow(2).sum(1)


def _nested(kind, net, inner, outer):
    """An outer guidance wrapper (schedule ``outer``) around an inner one (schedule ``inner``)."""
    wrapped = {
        "cfg": lambda f: cfg(f, outer),
        "rescale": lambda f: rescaled_cfg(f, outer),
        "thresh": lambda f: dynamic_thresholding(f, outer),
        "apg": lambda f: apg(f, outer, beta=-0.5),
        "cfgzero": lambda f: cfg_zero_star(f, outer, zero_init_steps=1),
        "cfgpp": lambda f: cfgpp(f, outer),
        "autoguidance": lambda f: autoguidance(f, outer, guide=cfg(net, inner)),
        "classifier": lambda f: classifier_guidance(f, _log_prob, outer),
    }[kind]
    return wrapped(cfg(net, inner))


KINDS = ["cfg", "rescale", "thresh", "apg", "cfgzero", "cfgpp", "autoguidance", "classifier"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_nested_wrapper_gets_the_host_logsnr_not_the_tensor(kind):
    inner, outer = Recorder(0.5), Recorder(0.7)
    f = _nested(kind, RowNet(), inner, outer)
    if isinstance(f, TrajectoryEpsFn):
        f = f.start_trajectory([-20.0, -3.0, 1.0, 20.0])
    assert isinstance(f, HostLogsnrEpsFn)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0])
    lying = torch.full((4,), 999.0)  # what the tensor says; the step's λ is 1.5
    if isinstance(f, PairedEpsFn):
        assert isinstance(f, HostLogsnrPairedEpsFn)
        f.eps_pair_at(z, lying, labels, host_logsnr=1.5)
    f.eps_at(z, lying, labels, host_logsnr=1.5)
    assert outer.seen and set(outer.seen) == {1.5}
    assert inner.seen and set(inner.seen) == {1.5}


@pytest.mark.parametrize("kind", KINDS)
def test_a_nested_wrapper_called_directly_reads_the_tensor(kind):
    inner, outer = Recorder(0.5), Recorder(0.7)
    f = _nested(kind, RowNet(), inner, outer)
    if isinstance(f, TrajectoryEpsFn):
        f = f.start_trajectory([-20.0, -3.0, 1.0, 20.0])
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    f(z, torch.full((4,), 2.25), torch.tensor([0, 1, 2, 0]))
    assert set(outer.seen) == {2.25} and set(inner.seen) == {2.25}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("kind", KINDS)
def test_samplers_make_no_tensor_read_for_nested_schedules(monkeypatch, sampler, kind):
    """Every tensor-to-number conversion raises from the first step's callback on: later steps of a nested guided
    run (schedules inside and out, an interval inside) must not read λ back from the tensor."""
    inner = guidance_interval(0.5, logsnr_lo=-6.0, logsnr_hi=6.0)
    outer = Recorder(0.7)
    f = _nested(kind, RowNet(), inner, outer)

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host inside the sampling loop")

    def callback(i, logsnr):
        if i == 0:
            for name in ("__float__", "item", "tolist", "__bool__", "__index__", "__int__"):
                monkeypatch.setattr(torch.Tensor, name, forbidden)

    labels = torch.tensor([0, 1, 2, 0])
    steps = 4
    grid = torch.tensor([-8.0, -3.0, 0.5, 4.0, 9.0], dtype=torch.float64) if sampler != "heun" else None
    kwargs = {"grid": grid} if grid is not None else {}
    SAMPLERS[sampler](f, (4, 2), labels, steps=steps, callback=callback, generator=torch.Generator().manual_seed(0),
                      **kwargs)
    monkeypatch.undo()
    assert len(outer.seen) >= steps and all(isinstance(v, float) for v in outer.seen)
    if grid is not None:
        assert set(outer.seen) <= {float(v) for v in grid}
    assert math.isfinite(outer.seen[-1])
