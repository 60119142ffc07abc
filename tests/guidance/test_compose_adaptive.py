"""Composed / negative conditions, adaptive guidance and LinearAG: the closed form on the exact mixture, neutral
settings equal to plain CFG, per-trajectory state, and the rows each step costs."""

import math

import pytest
import torch

from cfgdiff.core.schedule import alpha_sigma
from cfgdiff.guidance import (
    GUIDANCE_METHODS,
    adaptive,
    cfg,
    compose,
    guidance_interval,
    linear_ag,
    make_guide,
)
from cfgdiff.guidance.adaptive import cosine_rows
from cfgdiff.guidance.counting import CountingEpsFn
from cfgdiff.sampling.generate import generate_samples
from cfgdiff.sampling.solvers import SAMPLERS
from tests.helpers import RowNet, generators


def _inputs(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return z, torch.linspace(-6.0, 6.0, n, dtype=torch.float64)


# -- compose -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("terms", [[(0, 2.0), (2, -1.0)], [(1, 0.5)], [(0, 1.0), (1, 1.0), (2, -0.7)]])
@pytest.mark.parametrize("w", [0.0, 1.5])
def test_composed_eps_is_minus_sigma_times_the_score_of_the_product_of_conditions(gm, terms, w):
    """ε̃ = -σ ∇ log [p(z) Π_i (p(z|c_i)/p(z))^{(1+w) w_i}], by autograd of the exact log-densities."""
    z, logsnr = _inputs()
    null = torch.full((z.shape[0],), gm.num_classes)
    zg = z.clone().requires_grad_(True)
    log_q = gm.log_marginal(zg, logsnr, null)
    for c, weight in terms:
        log_q = log_q + (1 + w) * weight * (gm.log_marginal(zg, logsnr, torch.full_like(null, c))
                                            - gm.log_marginal(zg, logsnr, null))
    (grad,) = torch.autograd.grad(log_q.sum(), zg)
    _, sigma = alpha_sigma(logsnr)
    expected = -sigma[:, None] * grad
    got = compose(gm, w, terms=terms)(z, logsnr, null)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("w", [0.0, 0.7, 3.0, -1.0])
def test_one_term_is_plain_cfg(gm, w):
    """ε_u + (1 + w)(ε_c - ε_u) is CFG at w: as the term (c, 1 + w) at w = 0, and as the term (c, 1) at w."""
    z, logsnr = _inputs()
    for c in range(3):
        labels = torch.full((z.shape[0],), c)
        expected = cfg(gm, w)(z, logsnr, labels)
        torch.testing.assert_close(compose(gm, 0.0, terms=[(c, 1 + w)])(z, logsnr, labels), expected)
        torch.testing.assert_close(compose(gm, w, terms=[(c, 1.0)])(z, logsnr, labels), expected)


def test_compose_samples_as_cfg_through_a_sampler(gm):
    labels = torch.full((6,), 1)
    kw = {"steps": 8, "dtype": torch.float64}
    x = SAMPLERS["dpmpp_2m"](compose(gm, 2.0, terms=[(1, 1.0)]), (6, 2), labels, generator=generators(6), **kw)
    torch.testing.assert_close(x, SAMPLERS["dpmpp_2m"](cfg(gm, 2.0), (6, 2), labels, generator=generators(6), **kw))


def test_compose_is_one_call_of_k_plus_1_times_b_rows_per_step():
    net = RowNet()
    counted = CountingEpsFn(net)
    labels = torch.full((4,), 3)  # the labels' values are not read, only their number
    SAMPLERS["ddim"](compose(counted, 0.5, terms=[(0, 2.0), (1, -1.0), (2, 0.5)]), (4, 2), labels, steps=5,
                     generator=generators(4))
    assert counted.batch_sizes == [16] * 5
    counted.reset()
    with torch.no_grad():
        compose(counted, -1.0, terms=[(0, 2.0)])(torch.zeros(4, 2), torch.zeros(4), labels)  # s = 0: ε_u alone
    assert counted.batch_sizes == [4]


def test_compose_ignores_the_labels_values(gm):
    z, logsnr = _inputs()
    f = compose(gm, 1.0, terms=[(0, 1.5), (2, -0.5)])
    torch.testing.assert_close(f(z, logsnr, torch.zeros(12, dtype=torch.long)), f(z, logsnr, torch.full((12,), 3)))


def test_compose_outside_an_interval_is_the_composition_as_written(gm):
    z, logsnr = _inputs()
    terms = [(0, 1.5), (2, -0.5)]
    interval = guidance_interval(3.0, logsnr_lo=-1.0, logsnr_hi=1.0)
    for lam, w in ((-4.0, 0.0), (0.0, 3.0), (4.0, 0.0)):
        logsnr = torch.full((12,), lam, dtype=torch.float64)
        torch.testing.assert_close(compose(gm, interval, terms=terms)(z, logsnr, torch.zeros(12, dtype=torch.long)),
                                   compose(gm, w, terms=terms)(z, logsnr, torch.zeros(12, dtype=torch.long)))


@pytest.mark.parametrize(("terms", "needle"), [
    ([], "at least one"), ([(3, 1.0)], "outside [0, 3)"), ([(-1, 1.0)], "outside [0, 3)"),
    ([(0, math.nan)], "must be finite"), ([(0.5, 1.0)], "integer index"), ([(0,)], "pairs")])
def test_bad_terms_are_one_line_value_errors(gm, terms, needle):
    with pytest.raises(ValueError, match=None) as err:
        compose(gm, 1.0, terms=terms)
    assert needle in str(err.value) and "\n" not in str(err.value)


# -- adaptive ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun", "ancestral"])
def test_adaptive_at_gamma_1_samples_as_plain_cfg_bit_for_bit(gm, sampler):
    labels = torch.arange(6) % 3
    kw = {"steps": 10, "dtype": torch.float64}
    x = SAMPLERS[sampler](adaptive(gm, 2.0, gamma=1.0), (6, 2), labels, generator=generators(6), **kw)
    assert torch.equal(x, SAMPLERS[sampler](cfg(gm, 2.0), (6, 2), labels, generator=generators(6), **kw))


def _switch_trace(eps_fn, w, gamma, z_traj, logsnrs, labels):
    """Reference: evaluate CFG along one trajectory's inputs and mark, per row, the first step with cos > γ."""
    switched = torch.zeros(len(labels), dtype=torch.bool)
    rows = []
    for z, lam in zip(z_traj, logsnrs, strict=True):
        logsnr = torch.full((len(labels),), lam, dtype=torch.float64)
        rows.append(len(labels) + int((~switched).sum()))
        eps_c = eps_fn(z, logsnr, labels)
        guided = cfg(eps_fn, w)(z, logsnr, labels)
        switched = switched | (cosine_rows(eps_c, guided) > gamma)
    return rows


def test_adaptive_switches_each_row_once_its_cosine_crosses_gamma_and_counts_rows(gm):
    """Each step's rows are B + (rows not yet switched), the switch read from cos(ε_c, ε̃) along the trajectory."""
    labels = torch.arange(9) % 3
    counted = CountingEpsFn(gm)
    seen = []

    class Spy:
        num_classes = 3

        def __call__(self, z, logsnr, lab):
            if lab.shape[0] == 9 or (lab[9:] == 3).all():
                seen.append((z[:9].clone(), float(logsnr[0])))
            return counted(z, logsnr, lab)

    gamma = 0.999
    x = SAMPLERS["ddim"](adaptive(Spy(), 3.0, gamma=gamma), (9, 2), labels, steps=12,
                         generator=generators(9), dtype=torch.float64)
    assert torch.isfinite(x).all()
    expected = _switch_trace(gm, 3.0, gamma, [s[0] for s in seen], [s[1] for s in seen], labels)
    assert counted.batch_sizes == expected
    assert counted.rows < 12 * 18  # it did skip
    assert counted.batch_sizes[0] == 18 and len(counted.batch_sizes) == 12  # one call per step


def test_adaptive_state_does_not_leak_between_chunks_or_reused_objects(gm):
    labels = torch.arange(10) % 3
    kw = {"sampler": "dpmpp_2m", "steps": 10, "seed": 3, "dtype": torch.float64, "w": 3.0, "data_shape": (2,),
          "guide": lambda f, w: adaptive(f, w, gamma=0.999)}
    one = generate_samples(gm, labels, batch_size=10, **kw)
    chunked = generate_samples(gm, labels, batch_size=3, **kw)
    again = generate_samples(gm, labels, batch_size=10, **kw)
    torch.testing.assert_close(one, chunked, rtol=0, atol=1e-12)
    assert torch.equal(one, again)


def test_adaptive_nfe_is_below_cfg_at_the_same_steps_and_equal_at_gamma_1(gm):
    labels = torch.arange(12) % 3
    rows = {}
    for gamma in (1.0, 0.999, 0.99):
        counted = CountingEpsFn(gm)
        SAMPLERS["dpmpp_2m"](adaptive(counted, 2.0, gamma=gamma), (12, 2), labels, steps=16,
                             generator=generators(12), dtype=torch.float64)
        rows[gamma] = counted.rows / 12
    assert rows[1.0] == 32  # 2 rows per step per sample, as CFG
    assert rows[0.99] <= rows[0.999] < rows[1.0]


def test_adaptive_refuses_a_call_outside_a_trajectory_below_gamma_1(gm):
    z, logsnr = _inputs()
    with pytest.raises(RuntimeError, match="start_trajectory"):
        adaptive(gm, 1.0, gamma=0.9)(z, logsnr, torch.zeros(12, dtype=torch.long))


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.01, math.nan])
def test_adaptive_gamma_out_of_range_is_one_line(gm, gamma):
    with pytest.raises(ValueError, match=r"gamma must lie in \(0, 1\]"):
        adaptive(gm, 1.0, gamma=gamma)


# -- linear-ag -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun"])
def test_linear_ag_at_full_fraction_1_samples_as_plain_cfg_bit_for_bit(gm, sampler):
    labels = torch.arange(6) % 3
    kw = {"steps": 10, "dtype": torch.float64}
    x = SAMPLERS[sampler](linear_ag(gm, 2.0, full_fraction=1.0), (6, 2), labels, generator=generators(6), **kw)
    assert torch.equal(x, SAMPLERS[sampler](cfg(gm, 2.0), (6, 2), labels, generator=generators(6), **kw))


@pytest.mark.parametrize(("fraction", "full"), [(0.5, 8), (0.25, 4), (0.01, 1)])
def test_linear_ag_costs_2b_rows_on_the_first_steps_then_b(fraction, full):
    net = RowNet()
    counted = CountingEpsFn(net)
    SAMPLERS["ddim"](linear_ag(counted, 2.0, full_fraction=fraction), (4, 2), torch.tensor([0, 1, 2, 0]), steps=16,
                     generator=generators(4))
    assert counted.batch_sizes == [8] * full + [4] * (16 - full)


def test_linear_ag_recovers_an_exactly_affine_unconditional_model():
    """If ε_c - ε_u is constant along a trajectory, the estimate ε̂_u = ε_c - Δ is exact and the run equals CFG."""

    class ConstantGap:
        num_classes = 3

        def __call__(self, z, logsnr, labels):
            base = torch.sin(z + logsnr[:, None] / 7)
            gap = torch.tensor([[0.3, -0.2]], dtype=z.dtype) * (1 + labels[:, None].clamp(max=2)).to(z.dtype)
            return torch.where((labels == 3)[:, None], base, base + gap)  # ε_c - ε_u depends on c only

    labels = torch.tensor([0, 1, 2, 1])
    kw = {"steps": 12, "dtype": torch.float64}
    x = SAMPLERS["ddim"](linear_ag(ConstantGap(), 2.0, full_fraction=0.25), (4, 2), labels,
                         generator=generators(4), **kw)
    expected = SAMPLERS["ddim"](cfg(ConstantGap(), 2.0), (4, 2), labels, generator=generators(4), **kw)
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)


def test_linear_ag_state_does_not_leak_between_chunks(gm):
    labels = torch.arange(10) % 3
    kw = {"sampler": "dpmpp_2m", "steps": 10, "seed": 3, "dtype": torch.float64, "w": 2.0, "data_shape": (2,),
          "guide": lambda f, w: linear_ag(f, w, full_fraction=0.5)}
    torch.testing.assert_close(generate_samples(gm, labels, batch_size=10, **kw),
                               generate_samples(gm, labels, batch_size=4, **kw), rtol=0, atol=1e-10)


@pytest.mark.parametrize("fraction", [0.0, 1.5, math.nan])
def test_linear_ag_fraction_out_of_range_is_one_line(gm, fraction):
    with pytest.raises(ValueError, match=r"full_fraction must lie in \(0, 1\]"):
        linear_ag(gm, 1.0, full_fraction=fraction)


def test_the_registry_knows_the_three_methods():
    assert GUIDANCE_METHODS["adaptive"].neutral == {"gamma": 1.0}
    assert GUIDANCE_METHODS["linear-ag"].neutral == {"full_fraction": 1.0}
    assert GUIDANCE_METHODS["compose"].requires == ("terms",)
    with pytest.raises(ValueError, match="terms"):
        make_guide("compose", weights=[1.0])
