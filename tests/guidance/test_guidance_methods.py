"""Guidance methods beyond CFG: neutral settings, identities derived from each formula, the exact mixture, cost.

The mixture checks use ``cfgdiff.core.toy.GaussianMixture`` (exact ε), the same seeds for every method (common random
numbers), and compare a method with plain CFG on the quantity the method's paper says it fixes: the per-sample
contrast for rescale (Lin et al.: over-exposure), the per-sample norm for APG (Sadat et al.: over-saturation),
the data range for dynamic thresholding (Imagen). Plain CFG's own effect (the per-class variance shrinks as w
grows) is derived from the mixture.
"""

import math

import pytest
import torch

from cfgdiff.core.schedule import alpha_sigma
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.guidance import (
    GUIDANCE_METHODS,
    apg,
    autoguidance,
    cfg,
    cfg_zero_star,
    cfgpp,
    dynamic_thresholding,
    guidance_interval,
    make_guide,
    rescaled_cfg,
)
from cfgdiff.guidance.counting import CountingEpsFn
from cfgdiff.sampling.solvers import SAMPLERS
from tests.helpers import PerturbableNet, RowNet


@pytest.fixture(scope="module")
def gm8():
    """An 8-D mixture of overlapping classes on a common offset, as images are: a shared mean plus a class pattern."""
    g = torch.Generator().manual_seed(1)
    means = 0.3 + 0.15 * torch.randn(3, 8, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.full((3,), 0.25, dtype=torch.float64))


def _inputs(gm, n=12, seed=0, lo=-8.0, hi=8.0):
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, gm.dim, generator=g, dtype=torch.float64)
    logsnr = torch.linspace(lo, hi, n, dtype=torch.float64)
    labels = torch.arange(n) % gm.num_classes
    return z, logsnr, labels


def _x_hat(z, logsnr, eps):
    alpha, sigma = alpha_sigma(logsnr)
    return (z - sigma[:, None] * eps) / alpha[:, None]


def _weaker(gm):
    """A 'bad version' of the mixture for autoguidance: the same classes, blurrier (1.5x the stds)."""
    return GaussianMixture(gm.means, 1.5 * gm.stds)


def _method_params(gm):
    """Each registered method at its recommended parameters, with what it needs on the mixture."""
    return {"cfg": {}, "rescale": {}, "thresholding": {"bound": 2.0}, "apg": {}, "cfgpp": {}, "cfg-zero": {},
            "auto": {"guide": _weaker(gm)}, "classifier": {"log_prob_fn": gm.log_prob_fn},
            "compose": {"terms": [(0, 1.5), (2, -0.5)]}, "adaptive": {}, "linear-ag": {}}


# -- neutral settings give plain CFG ----------------------------------------------------------------------


@pytest.mark.parametrize("w", [0.5, 4.0, -1.0])
def test_rescale_with_phi_0_is_plain_cfg_exactly(gm, w):
    z, logsnr, labels = _inputs(gm)
    assert torch.equal(rescaled_cfg(gm, w, phi=0.0)(z, logsnr, labels), cfg(gm, w)(z, logsnr, labels))


@pytest.mark.parametrize("w", [0.5, 4.0])
def test_apg_with_eta_1_no_clamp_no_momentum_is_plain_cfg(gm, w):
    z, logsnr, labels = _inputs(gm)
    got = apg(gm, w, eta=1.0, r=math.inf, beta=0.0)(z, logsnr, labels)
    # the update is split into its parts along and across x̂_c and added back: float64 rounding only
    torch.testing.assert_close(got, cfg(gm, w)(z, logsnr, labels), rtol=1e-9, atol=1e-9)


def test_thresholding_of_predictions_in_range_is_plain_cfg_exactly(gm):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(30) % 3
    x = gm.sample(labels, g).clamp(-0.95, 0.95)
    logsnr = torch.linspace(2.0, 8.0, 30, dtype=torch.float64)
    alpha, sigma = alpha_sigma(logsnr)
    z = alpha[:, None] * x + sigma[:, None] * torch.randn(30, 2, generator=g, dtype=torch.float64)
    plain = cfg(gm, 0.5)(z, logsnr, labels)
    assert _x_hat(z, logsnr, plain).abs().max() <= 1.0  # the premise: every prediction already in range
    assert torch.equal(dynamic_thresholding(gm, 0.5, percentile=99.5)(z, logsnr, labels), plain)


def test_cfg_zero_with_unit_scale_and_no_zero_init_is_plain_cfg_exactly(gm):
    z, logsnr, labels = _inputs(gm)
    got = cfg_zero_star(gm, 3.0, zero_init_steps=0, optimized_scale=False)(z, logsnr, labels)
    assert torch.equal(got, cfg(gm, 3.0)(z, logsnr, labels))


def test_every_method_at_its_neutral_setting_samples_as_plain_cfg(gm):
    labels = torch.arange(9) % 3
    kw = {"steps": 12, "dtype": torch.float64}
    ref = SAMPLERS["ddim"](cfg(gm, 2.0), (9, 2), labels, generator=torch.Generator().manual_seed(3), **kw)
    for name, spec in GUIDANCE_METHODS.items():
        if spec.neutral is None or name == "thresholding":  # thresholding is neutral only on in-range x̂
            continue
        model = PerturbableNet(gm, GaussianMixture(gm.means, 1.5 * gm.stds)) if spec.perturbation else gm
        x = SAMPLERS["ddim"](make_guide(name, **spec.neutral)(model, 2.0), (9, 2), labels,
                             generator=torch.Generator().manual_seed(3), **kw)
        torch.testing.assert_close(x, ref, rtol=1e-9, atol=1e-9, msg=name)


# -- identities of each formula -------------------------------------------------------------------------


def test_rescale_with_phi_1_gives_the_conditional_prediction_std(gm8):
    z, logsnr, labels = _inputs(gm8, lo=-2.0, hi=6.0)
    eps_c = gm8(z, logsnr, labels)
    got = rescaled_cfg(gm8, 4.0, phi=1.0)(z, logsnr, labels)
    torch.testing.assert_close(_x_hat(z, logsnr, got).std(1), _x_hat(z, logsnr, eps_c).std(1), rtol=1e-9, atol=1e-12)
    # and φ = 0.5 is halfway between plain CFG's x̂ and the fully rescaled one
    half = _x_hat(z, logsnr, rescaled_cfg(gm8, 4.0, phi=0.5)(z, logsnr, labels))
    ends = [_x_hat(z, logsnr, f(z, logsnr, labels)) for f in (cfg(gm8, 4.0), rescaled_cfg(gm8, 4.0, phi=1.0))]
    torch.testing.assert_close(half, 0.5 * (ends[0] + ends[1]), rtol=1e-9, atol=1e-9)


def test_apg_update_without_parallel_part_is_orthogonal_to_the_conditional_prediction(gm8):
    z, logsnr, labels = _inputs(gm8, lo=-2.0, hi=6.0)
    x_cond = _x_hat(z, logsnr, gm8(z, logsnr, labels))
    x_apg = _x_hat(z, logsnr, apg(gm8, 3.0, eta=0.0, r=math.inf, beta=0.0)(z, logsnr, labels))
    cosine = ((x_apg - x_cond) * x_cond).sum(1) / ((x_apg - x_cond).norm(dim=1) * x_cond.norm(dim=1))
    assert cosine.abs().max() < 1e-9


def test_apg_norm_clamp_bounds_the_update_at_w_times_r(gm8):
    z, logsnr, labels = _inputs(gm8, lo=-4.0, hi=4.0)
    x_cond = _x_hat(z, logsnr, gm8(z, logsnr, labels))
    x_uncond = _x_hat(z, logsnr, gm8(z, logsnr, torch.full_like(labels, 3)))
    w, r = 2.0, 0.3
    x_apg = _x_hat(z, logsnr, apg(gm8, w, eta=1.0, r=r, beta=0.0)(z, logsnr, labels))
    expected = w * torch.clamp((x_cond - x_uncond).norm(dim=1), max=r)  # η = 1: the whole (clamped) Δ
    torch.testing.assert_close((x_apg - x_cond).norm(dim=1), expected, rtol=1e-8, atol=1e-10)
    assert bool(((x_cond - x_uncond).norm(dim=1) > r).any())  # the clamp did act somewhere


def test_cfg_zero_scale_is_the_least_squares_projection_in_velocity(gm8):
    """s* = <v_c, v_u>/‖v_u‖² minimises ‖v_c - s v_u‖, so the guidance direction v_c - s* v_u is orthogonal to v_u
    (v = ε - x̂, the flow-matching velocity of x_rf = z/(α + σ))."""
    z, logsnr, labels = _inputs(gm8, lo=-3.0, hi=5.0)
    alpha, sigma = (t[:, None] for t in alpha_sigma(logsnr))

    def velocity(eps):
        return ((alpha + sigma) * eps - z) / alpha

    w = 2.0
    v_c = velocity(gm8(z, logsnr, labels))
    v_u = velocity(gm8(z, logsnr, torch.full_like(labels, 3)))
    v = velocity(cfg_zero_star(gm8, w, zero_init_steps=0)(z, logsnr, labels))
    direction = (v - v_c) / w
    cosine = (direction * v_u).sum(1) / (direction.norm(dim=1) * v_u.norm(dim=1))
    assert cosine.abs().max() < 1e-7


@pytest.mark.parametrize("w", [0.0, 1.0, 4.0, 10.0])
def test_autoguidance_by_the_model_itself_is_the_conditional_model(gm, w):
    z, logsnr, labels = _inputs(gm)
    assert torch.equal(autoguidance(gm, w, guide=gm)(z, logsnr, labels), gm(z, logsnr, labels))


def test_autoguidance_by_itself_samples_the_conditional_model_at_every_w(gm):
    labels = torch.arange(12) % 3
    runs = [SAMPLERS["ancestral"](autoguidance(gm, w, guide=gm), (12, 2), labels, steps=16, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(5)) for w in (0.0, 3.0, 10.0)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_autoguidance_with_a_weaker_guide_is_its_formula(gm):
    z, logsnr, labels = _inputs(gm)
    weak = _weaker(gm)
    got = autoguidance(gm, 2.0, guide=weak)(z, logsnr, labels)
    torch.testing.assert_close(got, 3.0 * gm(z, logsnr, labels) - 2.0 * weak(z, logsnr, labels))


def test_thresholding_keeps_x_hat_within_the_bound_and_rescales_by_the_percentile(gm8):
    z, logsnr, labels = _inputs(gm8, lo=0.0, hi=6.0)
    x_cfg = _x_hat(z, logsnr, cfg(gm8, 8.0)(z, logsnr, labels))
    x_t = _x_hat(z, logsnr, dynamic_thresholding(gm8, 8.0, percentile=90.0)(z, logsnr, labels))
    s = torch.quantile(x_cfg.abs(), 0.9, dim=1).clamp_min(1.0)[:, None]
    torch.testing.assert_close(x_t, x_cfg.clamp(-s, s) / s, rtol=1e-9, atol=1e-9)
    assert x_t.abs().max() <= 1.0 + 1e-9 and x_cfg.abs().max() > 1.5


# -- the exact mixture, sampled ---------------------------------------------------------------------------

N_PER_CLASS = 200


def _sample(gm, eps_fn, sampler="ddim", steps=24):
    labels = torch.arange(gm.num_classes).repeat_interleave(N_PER_CLASS)
    generators = [torch.Generator().manual_seed(i) for i in range(labels.shape[0])]
    x = SAMPLERS[sampler](eps_fn, (labels.shape[0], gm.dim), labels, steps=steps, generator=generators,
                          dtype=torch.float64)
    return x, labels


@pytest.mark.parametrize("sampler", ["ddim", "ancestral", "dpmpp_2m", "heun"])
def test_every_method_stays_finite_at_w_10(gm, sampler):
    for name, params in _method_params(gm).items():
        x, _ = _sample(gm, make_guide(name, **params)(gm, 10.0), sampler, steps=16)
        assert bool(torch.isfinite(x).all()), name
    x, _ = _sample(gm, cfgpp(gm, 0.0), sampler, steps=16)  # CFG++'s strongest setting in the paper's range
    assert bool(torch.isfinite(x).all())


def _class_variance(x, labels):
    """Per class, the total variance (trace of the covariance): [K]."""
    return torch.stack([torch.cov(x[labels == c].T).trace() for c in range(int(labels.max()) + 1)])


def test_plain_cfg_shrinks_each_class_variance(gm):
    """Guidance concentrates each class on p(x|c) p(c|x)^w: its variance falls below the unguided one. The margin is
    five standard errors of the total-variance estimate, sqrt(Σ_d 2 s_d⁴/(n-1)), with s_d from the mixture itself."""
    x0, labels = _sample(gm, cfg(gm, 0.0))
    x10, _ = _sample(gm, cfg(gm, 10.0))
    margin = 5 * torch.sqrt((2 * gm.stds**4).sum(1) / (N_PER_CLASS - 1))
    assert bool((_class_variance(x10, labels) < _class_variance(x0, labels) - margin).all())


def _gap(stat, x, x_ref):
    return (stat(x) - stat(x_ref)).abs().mean()


def test_rescale_keeps_the_conditional_contrast_that_cfg_inflates(gm8):
    """Lin et al.: CFG inflates the per-sample std (over-exposure); rescaling x̂ keeps it near the conditional's."""
    x0, _ = _sample(gm8, cfg(gm8, 0.0))

    def contrast(x):
        return x.std(dim=1).mean()

    for w in (4.0, 10.0):
        x_cfg, _ = _sample(gm8, cfg(gm8, w))
        x_rescaled, _ = _sample(gm8, rescaled_cfg(gm8, w))
        assert contrast(x_cfg) > contrast(x0)
        assert _gap(contrast, x_rescaled, x0) < 0.5 * _gap(contrast, x_cfg, x0)


def test_apg_keeps_the_conditional_saturation_that_cfg_inflates(gm8):
    """Sadat et al.: the part of the guidance parallel to x̂_c over-saturates (raises ‖x‖); APG keeps ‖x‖ near the
    conditional's."""
    x0, _ = _sample(gm8, cfg(gm8, 0.0))

    def saturation(x):
        return x.norm(dim=1).mean()

    for w in (4.0, 10.0):
        x_cfg, _ = _sample(gm8, cfg(gm8, w))
        x_apg, _ = _sample(gm8, apg(gm8, w))
        assert saturation(x_cfg) > saturation(x0)
        assert _gap(saturation, x_apg, x0) < 0.5 * _gap(saturation, x_cfg, x0)


def test_thresholding_keeps_samples_in_the_data_range(gm8):
    """DDIM returns the last x̂, which dynamic thresholding maps into [-b, b]; plain CFG leaves it."""
    x_cfg, _ = _sample(gm8, cfg(gm8, 10.0))
    x_t, _ = _sample(gm8, dynamic_thresholding(gm8, 10.0, bound=1.0))
    assert x_cfg.abs().max() > 1.0 and x_t.abs().max() <= 1.0 + 1e-9


# -- cost: one batched call per guided step ---------------------------------------------------------------


def _counted_methods(net):
    """Each method over a counted RowNet; autoguidance's guide network counted on its own."""
    guide = CountingEpsFn(RowNet())
    params = {"cfg": {}, "rescale": {}, "thresholding": {"bound": 10.0}, "apg": {"beta": 0.0}, "cfgpp": {},
              "cfg-zero": {"zero_init_steps": 0}, "auto": {"guide": guide}, "classifier": {"log_prob_fn": _log_prob},
              "pag": {}, "skip-layer": {}, "compose": {"terms": [(0, 1.5), (2, -0.5)]}, "adaptive": {"gamma": 1.0},
              "linear-ag": {"full_fraction": 1.0}}  # adaptive and linear-ag at settings that compute every row
    return params, guide


def _subject(name, net):
    """The network a method is run on: for PAG / SLG one with the per-row perturbation switch."""
    return PerturbableNet(net, RowNet(dim=2)) if GUIDANCE_METHODS[name].perturbation else net


def _log_prob(z, logsnr, labels):
    return -((z - labels[:, None].to(z.dtype)) ** 2).sum(1)


@pytest.mark.parametrize("name", list(GUIDANCE_METHODS))
def test_a_guided_step_is_one_call_and_an_unguided_one_is_b_rows(name):
    net = RowNet()
    counted = CountingEpsFn(_subject(name, net))
    params, guide = _counted_methods(net)
    z, labels = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        make_guide(name, **params[name])(counted, 1.5)(z, torch.zeros(4), labels)
        guided = list(counted.batch_sizes)
        counted.reset()
        guide.reset()
        interval = guidance_interval(1.5, logsnr_lo=-1.0, logsnr_hi=1.0)
        make_guide(name, **params[name])(counted, interval)(z, torch.full((4,), 5.0), labels)  # outside
    if name == "compose":  # two conditions and ∅, one call of 3B rows, guided or not (the composition as written)
        assert guided == [12] and counted.batch_sizes == [12]
        return
    assert counted.batch_sizes == [4] and guide.calls == 0  # unguided: the main network alone, B rows
    if name == "auto":
        assert guided == [4]  # and one call of B rows of the guide network
    elif name == "classifier":
        assert guided == [4]  # plus a classifier forward and backward pass
    elif GUIDANCE_METHODS[name].perturbation:
        assert guided == [12]  # conditional, null and perturbed rows in one call
    else:
        assert guided == [8]


@pytest.mark.parametrize("name", list(GUIDANCE_METHODS))
def test_nfe_over_a_run_is_one_call_per_step(name):
    net = RowNet()
    counted = CountingEpsFn(_subject(name, net))
    params, guide = _counted_methods(net)
    labels = torch.tensor([0, 1, 2])
    SAMPLERS["ddim"](make_guide(name, **params[name])(counted, 2.0), (3, 2), labels, steps=7,
                     generator=torch.Generator().manual_seed(0))
    assert counted.calls == 7
    three_rows = name == "compose" or GUIDANCE_METHODS[name].perturbation  # compose here: two classes and the null
    per_step = 3 if name in ("auto", "classifier") else 9 if three_rows else 6
    assert counted.rows == 7 * per_step
    assert guide.rows == (7 * 3 if name == "auto" else 0)


def test_w_0_costs_b_rows_except_where_the_method_needs_the_unconditional_model():
    net = RowNet()
    z, labels = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    for name, rows in (("cfg", 4), ("rescale", 4), ("apg", 4), ("cfg-zero", 4), ("thresholding", 4), ("cfgpp", 8)):
        counted = CountingEpsFn(net)
        params = {"thresholding": {"bound": 10.0}, "cfg-zero": {"zero_init_steps": 0}}.get(name, {})
        with torch.no_grad():
            make_guide(name, **params)(counted, 0.0)(z, torch.zeros(4), labels)
        assert counted.batch_sizes == [rows], name


# -- parameters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "needle"), [
    (lambda gm: rescaled_cfg(gm, 1.0, phi=1.5), "phi must lie in [0, 1]"),
    (lambda gm: rescaled_cfg(gm, 1.0, phi=-0.1), "phi must lie in [0, 1]"),
    (lambda gm: rescaled_cfg(gm, 1.0, phi=math.nan), "phi"),
    (lambda gm: dynamic_thresholding(gm, 1.0, percentile=0.0), "percentile must lie in (0, 100]"),
    (lambda gm: dynamic_thresholding(gm, 1.0, percentile=100.5), "percentile must lie in (0, 100]"),
    (lambda gm: dynamic_thresholding(gm, 1.0, bound=0.0), "bound"),
    (lambda gm: apg(gm, 1.0, r=0.0), "r (the norm bound) must be > 0"),
    (lambda gm: apg(gm, 1.0, r=-1.0), "r (the norm bound) must be > 0"),
    (lambda gm: apg(gm, 1.0, eta=math.inf), "eta"),
    (lambda gm: cfgpp(gm, -1.5), "CFG++ takes w >= -1"),
    (lambda gm: cfg_zero_star(gm, 1.0, zero_init_steps=-1), "zero_init_steps"),
    (lambda gm: autoguidance(gm, 1.0, guide=GaussianMixture(torch.zeros(2, 2), torch.ones(2))), "2 classes"),
    (lambda gm: autoguidance(gm, 1.0, guide=GaussianMixture(torch.zeros(3, 4), torch.ones(3))), "shape (4,)"),
    (lambda gm: make_guide("rescale", psi=0.3), "psi"),
    (lambda gm: make_guide("bogus"), "unknown guidance 'bogus'"),
    (lambda gm: cfg(gm, math.inf), "finite"),
])
def test_bad_parameters_are_one_line_value_errors(gm, build, needle):
    with pytest.raises(ValueError) as err:
        build(gm)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_schedule_weight_is_checked_per_step(gm):
    z, logsnr, labels = _inputs(gm)
    with pytest.raises(ValueError, match="CFG\\+\\+ takes w >= -1"):
        cfgpp(gm, lambda lam: -2.0)(z, logsnr, labels)
