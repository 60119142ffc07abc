"""The eps_fn contract's two extensions as every sampler honours them: ``eps_pair`` (CFG++) and ``start_trajectory``
(per-trajectory state: APG momentum, CFG-Zero* zero-init), and the guidance interval composed with every method."""

import math

import pytest
import torch

from cfgdiff.core.schedule import alpha_sigma
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.guidance import (
    GUIDANCE_METHODS,
    EpsPair,
    adaptive,
    apg,
    cfg,
    cfg_zero_star,
    cfgpp,
    guidance_interval,
    linear_ag,
    make_guide,
)
from cfgdiff.guidance.counting import CountingEpsFn
from cfgdiff.sampling.generate import generate_samples
from cfgdiff.sampling.solvers import SAMPLERS
from tests.helpers import PerturbableNet, RowNet, generators


class PairView:
    """A plain eps_fn seen through the extensions: a consistent pair (ε, ε) and a trajectory that is itself."""

    def __init__(self, eps_fn):
        self.eps_fn = eps_fn
        self.num_classes = eps_fn.num_classes
        self.started = []

    def start_trajectory(self, logsnrs):
        self.started.append(list(logsnrs))
        return self

    def eps_pair(self, z, logsnr, labels):
        eps = self.eps_fn(z, logsnr, labels)
        return EpsPair(eps, eps)

    def __call__(self, z, logsnr, labels):
        raise AssertionError("a sampler must use eps_pair when it is there")


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("clip_x", [False, True])
def test_a_consistent_pair_and_a_trivial_trajectory_sample_bit_for_bit_as_the_plain_eps_fn(sampler, clip_x):
    net = RowNet()
    labels = torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        plain = SAMPLERS[sampler](cfg(net, 1.5), (5, 2), labels, steps=6, generator=generators(5), clip_x=clip_x)
        view = PairView(cfg(net, 1.5))
        paired = SAMPLERS[sampler](view, (5, 2), labels, steps=6, generator=generators(5), clip_x=clip_x)
    assert torch.equal(plain, paired)
    assert len(view.started) == 1 and len(view.started[0]) == 7  # once per call, with the sampler's 7-point grid


# -- CFG++ ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_cfgpp_at_lambda_0_is_the_unconditional_sampler(gm, sampler):
    labels = torch.arange(12) % 3
    kw = {"steps": 10, "dtype": torch.float64}
    x_pp = SAMPLERS[sampler](cfgpp(gm, -1.0), (12, 2), labels, generator=generators(12), **kw)
    x_unc = SAMPLERS[sampler](cfg(gm, -1.0), (12, 2), labels, generator=generators(12), **kw)
    x_null = SAMPLERS[sampler](gm, (12, 2), torch.full_like(labels, 3), generator=generators(12), **kw)
    torch.testing.assert_close(x_pp, x_unc, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x_pp, x_null, rtol=1e-9, atol=1e-9)


def _cfgpp_equivalent_w(lam_cfg, logsnr, logsnr_next, eta):
    """The CFG weight whose step from λ to λ' equals one CFG++ step: with z_eff = z - σ λ_cfg (ε_c - ε_u) and the
    first-order update z' = c_z z_eff + c_x x̂ of these samplers, matching the ε_c - ε_u terms gives
    1 + w = λ_cfg / (1 - e^{-(1+η) h}), h = (λ' - λ)/2 (η = 0: DDIM, DPM-Solver++, Euler; η = 1: the ancestral
    posterior mean and DPM-Solver++ SDE)."""
    h = 0.5 * (logsnr_next - logsnr)
    return lam_cfg / -math.expm1(-(1.0 + eta) * h) - 1.0


@pytest.mark.parametrize(("sampler", "eta", "points"), [
    ("ddim", 0.0, 3), ("dpmpp_2m", 0.0, 3), ("dpmpp_3m", 0.0, 3), ("heun", 0.0, 2),
    ("ancestral", 1.0, 3), ("dpmpp_2m_sde", 1.0, 3),
])
def test_a_cfgpp_step_is_a_cfg_step_at_the_derived_weight_in_every_sampler(gm, sampler, eta, points):
    """Every sampler honours eps_pair: on a short grid whose steps are all first order (the last step of DPM-Solver++
    is, and deterministic; Heun's last step is Euler alone), CFG++ equals CFG with the weight of
    ``_cfgpp_equivalent_w`` per step, and a step that returns x̂ equals CFG at w = λ_cfg - 1 (the x̂ CFG++ steps
    towards)."""
    grid = [-3.0, 0.5, 4.0][:points]
    lam_cfg = 0.6
    weights = {}
    for i, (lam, lam_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        last = i == len(grid) - 2
        returns_x_hat = sampler in ("ddim", "ancestral") and last
        step_eta = 0.0 if last else eta  # DPM-Solver++ SDE's last step is deterministic
        weights[lam] = lam_cfg - 1.0 if returns_x_hat else _cfgpp_equivalent_w(lam_cfg, lam, lam_next, step_eta)
    labels = torch.arange(9) % 3
    kw = {"grid": torch.tensor(grid, dtype=torch.float64), "dtype": torch.float64}
    x_pp = SAMPLERS[sampler](cfgpp(gm, lam_cfg - 1.0), (9, 2), labels, generator=generators(9), **kw)
    x_cfg = SAMPLERS[sampler](cfg(gm, weights.__getitem__), (9, 2), labels, generator=generators(9), **kw)
    torch.testing.assert_close(x_pp, x_cfg, rtol=1e-9, atol=1e-9)
    x_plain = SAMPLERS[sampler](cfg(gm, lam_cfg - 1.0), (9, 2), labels, generator=generators(9), **kw)
    assert not torch.allclose(x_pp, x_plain)  # the re-noising ε_u did change the path


def test_cfgpp_called_as_a_plain_eps_fn_is_cfg_at_w(gm):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 2, generator=g, dtype=torch.float64)
    logsnr, labels = torch.linspace(-4, 4, 6, dtype=torch.float64), torch.arange(6) % 3
    torch.testing.assert_close(cfgpp(gm, -0.3)(z, logsnr, labels), cfg(gm, -0.3)(z, logsnr, labels))


# -- per-trajectory state -------------------------------------------------------------------------------


STATEFUL = {"apg": lambda f, w: apg(f, w, eta=0.0, r=1.0, beta=-0.5),
            "cfg-zero": lambda f, w: cfg_zero_star(f, w, zero_init_steps=2),
            "adaptive": lambda f, w: adaptive(f, w, gamma=0.999),
            "linear-ag": lambda f, w: linear_ag(f, w, full_fraction=0.5)}


@pytest.mark.parametrize("name", list(STATEFUL))
@pytest.mark.parametrize("sampler", ["ddim", "heun", "ancestral"])
def test_state_is_per_trajectory_reused_objects_and_chunks_give_the_same_samples(name, sampler):
    net = RowNet().double()
    labels = torch.arange(7) % 3
    guide = STATEFUL[name]
    kw = {"sampler": sampler, "steps": 6, "seed": 11, "dtype": torch.float64, "guide": guide}
    with torch.no_grad():
        whole = generate_samples(net, labels, w=2.0, batch_size=7, data_shape=(2,), **kw)
        chunked = generate_samples(net, labels, w=2.0, batch_size=3, data_shape=(2,), **kw)
        guided = guide(net, 2.0)  # one object, two sampler calls: the second starts from fresh state
        first = SAMPLERS[sampler](guided, (7, 2), labels, steps=6, generator=generators(7), dtype=torch.float64)
        again = SAMPLERS[sampler](guided, (7, 2), labels, steps=6, generator=generators(7), dtype=torch.float64)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    assert torch.equal(first, again)


@pytest.mark.parametrize("name", list(STATEFUL))
def test_stateful_methods_refuse_a_call_outside_a_trajectory(gm, name):
    z, logsnr, labels = torch.randn(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), torch.arange(3)
    with pytest.raises(RuntimeError, match="trajectory"):
        STATEFUL[name](gm, 2.0)(z, logsnr, labels)


def test_apg_momentum_follows_its_recurrence(gm):
    """m_t = Δ_t + β m_{t-1} in data space, then the same projection as without momentum."""
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(6) % 3
    z0, z1 = (torch.randn(6, 2, generator=g, dtype=torch.float64) for _ in range(2))
    lam0, lam1 = torch.full((6,), -1.0, dtype=torch.float64), torch.full((6,), 2.0, dtype=torch.float64)
    beta, w = -0.5, 3.0
    trajectory = apg(gm, w, eta=0.3, r=math.inf, beta=beta).start_trajectory([-1.0, 2.0, 5.0])
    trajectory(z0, lam0, labels)
    got = trajectory(z1, lam1, labels)

    def delta_x(z, lam):  # Δ = x̂_c - x̂_u
        alpha, sigma = alpha_sigma(lam[:1])
        return (sigma / alpha) * (gm(z, lam, torch.full_like(labels, 3)) - gm(z, lam, labels))

    m = delta_x(z1, lam1) + beta * delta_x(z0, lam0)
    alpha, sigma = alpha_sigma(lam1[:1])
    x_cond = (z1 - sigma * gm(z1, lam1, labels)) / alpha
    parallel = ((m * x_cond).sum(1, keepdim=True) / (x_cond**2).sum(1, keepdim=True)) * x_cond
    expected = gm(z1, lam1, labels) - (alpha / sigma) * w * ((m - parallel) + 0.3 * parallel)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    without = apg(gm, w, eta=0.3, r=math.inf, beta=0.0)(z1, lam1, labels)
    assert not torch.allclose(got, without)


def test_cfg_zero_init_makes_no_call_on_the_first_k_grid_points():
    net = RowNet()
    counted = CountingEpsFn(net)
    with torch.no_grad():
        SAMPLERS["ddim"](cfg_zero_star(counted, 2.0, zero_init_steps=2), (3, 2), torch.arange(3), steps=7,
                         generator=torch.Generator().manual_seed(0))
    assert counted.calls == 5 and counted.batch_sizes == [6] * 5


def test_cfg_zero_init_step_does_not_move_the_flow(gm):
    """v = 0 on the first grid point: DDIM moves z to z (α' + σ')/(α + σ), the same point in x_rf = z/(α + σ)."""
    grid = [-6.0, -1.0, 3.0]
    labels = torch.arange(6) % 3
    z0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (a0, a1), (s0, s1) = alpha_sigma(torch.tensor(grid[:2], dtype=torch.float64))
    x = SAMPLERS["ddim"](cfg_zero_star(gm, 2.0, zero_init_steps=1), (6, 2), labels, z=z0, dtype=torch.float64,
                         grid=torch.tensor(grid, dtype=torch.float64))
    z1 = z0 * (a1 + s1) / (a0 + s0)
    expected = SAMPLERS["ddim"](cfg_zero_star(gm, 2.0, zero_init_steps=0), (6, 2), labels, z=z1, dtype=torch.float64,
                                grid=torch.tensor(grid[1:], dtype=torch.float64))
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-10)


# -- composition with the guidance interval and w(λ) schedules --------------------------------------------


def _params(gm):
    return {"cfg": {}, "rescale": {}, "thresholding": {"bound": 2.0}, "apg": {"beta": 0.0}, "cfgpp": {},
            "cfg-zero": {"zero_init_steps": 0}, "auto": {"guide": GaussianMixture(gm.means, 1.5 * gm.stds)},
            "classifier": {"log_prob_fn": gm.log_prob_fn}, "pag": {}, "skip-layer": {}, "adaptive": {"gamma": 1.0},
            "linear-ag": {"full_fraction": 1.0}}


def _subject(name, gm):
    """The model a method runs on: for PAG / SLG the mixture with the per-row switch (perturbed = a wider one)."""
    return PerturbableNet(gm, GaussianMixture(gm.means, 1.5 * gm.stds)) if GUIDANCE_METHODS[name].perturbation else gm


# compose has no condition of its own: outside an interval it is the composition as written, not a conditional
# model (tests/guidance/test_compose_adaptive.py checks that)
CONDITIONED = [name for name in GUIDANCE_METHODS if name != "compose"]


def _eps(f, z, logsnr, labels):
    return f.eps_pair(z, logsnr, labels) if hasattr(f, "eps_pair") else f(z, logsnr, labels)


@pytest.mark.parametrize("name", CONDITIONED)
def test_the_interval_and_weight_schedules_compose_with_every_method(gm, name):
    params = _params(gm)[name]
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.arange(6) % 3
    interval = guidance_interval(lambda lam: -0.5 if lam < 0 else -0.2, logsnr_lo=-2.0, logsnr_hi=2.0)
    schedule_fn = make_guide(name, **params)(_subject(name, gm), interval)
    for lam, inside in ((-5.0, False), (-1.0, True), (1.0, True), (3.0, False)):
        logsnr = torch.full((6,), lam, dtype=torch.float64)
        got = _eps(schedule_fn, z, logsnr, labels)
        if inside:  # the schedule's weight at λ, exactly as that constant weight
            expected = _eps(make_guide(name, **params)(_subject(name, gm), interval(lam)), z, logsnr, labels)
        else:  # outside: the plain conditional model, whatever the method
            eps_c = gm(z, logsnr, labels)
            expected = EpsPair(eps_c, eps_c) if hasattr(schedule_fn, "eps_pair") else eps_c
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", CONDITIONED)
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_outside_the_interval_everywhere_every_method_is_the_conditional_sampler(gm, name, sampler):
    labels = torch.arange(6) % 3
    nowhere = guidance_interval(5.0, logsnr_lo=100.0, logsnr_hi=200.0)
    kw = {"steps": 8, "dtype": torch.float64}
    x = SAMPLERS[sampler](make_guide(name, **_params(gm)[name])(_subject(name, gm), nowhere), (6, 2), labels,
                          generator=generators(6), **kw)
    assert torch.equal(x, SAMPLERS[sampler](gm, (6, 2), labels, generator=generators(6), **kw))


