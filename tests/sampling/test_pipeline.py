"""The guided-run pipeline: one object that samples any method at any w and counts network evaluations once.

Derived expectations: a GuidedRun draws exactly what the function API (``generate.iter_samples`` with the same
guide) draws; NFE is what each method's cost says (a guided classifier-free step is one call of 2B rows, an
unguided one B rows, autoguidance one call of B rows of each network, classifier guidance B denoiser rows plus B
classifier passes); a w-conditioned model takes one row per step and is recorded as distilled."""

from __future__ import annotations

import pytest
import torch

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.guidance import guidance_interval_sigma, make_guide
from cfgdiff.sampling.generate import generate_samples
from cfgdiff.sampling.pipeline import DISTILLED, GuidedRun, WConditionedEpsFn

STEPS = 6


@pytest.fixture()
def mixture() -> GaussianMixture:
    return GaussianMixture.three_gaussians()


def labels(n: int = 9) -> torch.Tensor:
    return torch.arange(n) % 3


@pytest.mark.parametrize("method, params", [("cfg", {}), ("rescale", {"phi": 0.5}), ("apg", {}), ("cfgpp", {})])
def test_a_run_draws_what_the_function_api_draws(mixture, method, params):
    w = -0.5 if method == "cfgpp" else 2.0
    run = GuidedRun(mixture, method=method, params=params, sampler="ddim", steps=STEPS, batch_size=4,
                    dtype=torch.float64)
    expected = generate_samples(mixture, labels(), w=w, sampler="ddim", steps=STEPS, batch_size=4, seed=7,
                                dtype=torch.float64, guide=make_guide(method, **params))
    assert torch.equal(run.samples(labels(), w, seed=7), expected)


def test_nfe_of_guided_unguided_and_interval_steps(mixture):
    run = GuidedRun(mixture, sampler="dpmpp_2m", steps=STEPS, batch_size=5)
    run.samples(labels(), 0.0, seed=0)
    assert run.denoiser_rows() == STEPS * 9  # w = 0: the conditional model, B rows a step
    run.counter.reset()
    run.samples(labels(), 1.0, seed=0)
    assert run.denoiser_rows() == 2 * STEPS * 9  # one call of 2B rows a step
    assert run.denoiser_calls() == STEPS * 2  # two chunks (5 + 4 rows), one call per step each
    interval = (0.5, 2.0)
    inside = GuidedRun(mixture, interval=interval, sampler="dpmpp_2m", steps=STEPS, batch_size=9)
    inside.samples(labels(), 1.0, seed=0)
    from cfgdiff.core.schedule import logsnr_grid

    grid = logsnr_grid(STEPS)[:-1]
    guided = guidance_interval_sigma(1.0, sigma_lo=interval[0], sigma_hi=interval[1]).guided
    expected = sum(2 if guided(float(lam)) else 1 for lam in grid) * 9
    assert inside.denoiser_rows() == expected < 2 * STEPS * 9


def test_autoguidance_counts_both_networks_and_classifier_guidance_its_classifier(mixture):
    weak = GaussianMixture.three_gaussians()
    auto = GuidedRun(mixture, method="auto", params={"guide": weak}, sampler="ddim", steps=STEPS, batch_size=9)
    auto.samples(labels(), 1.0, seed=0)
    assert auto.denoiser_rows() == 2 * STEPS * 9 and auto.classifier_rows() == 0  # B rows of each network
    by_classifier = GuidedRun(mixture, method="classifier", params={"log_prob_fn": mixture.log_prob_fn},
                              sampler="ddim", steps=STEPS, batch_size=9, dtype=torch.float64)
    by_classifier.samples(labels(), 1.0, seed=0)
    assert by_classifier.denoiser_rows() == STEPS * 9 and by_classifier.classifier_rows() == STEPS * 9
    assert by_classifier.uses_classifier and not auto.uses_classifier


class Student:
    """A w-conditioned model: at(w) is plain CFG of the mixture at w, as a guidance-distilled student would be."""

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture
        self.num_classes = mixture.num_classes
        self.data_shape = mixture.data_shape

    def at(self, w: float):
        if not 0 <= w <= 4:
            raise ValueError(f"w = {w} outside the student's range [0, 4]")
        guided = make_guide("cfg")(self.mixture, w)

        def eps_fn(z, logsnr, labels):  # one call of B rows: what the student's one network costs
            return guided(z, logsnr, labels)

        eps_fn.num_classes = self.num_classes
        return eps_fn

    def record(self) -> dict:
        return {"distilled": "test student"}


def test_a_w_conditioned_model_is_sampled_without_a_guidance_wrapper(mixture):
    student = Student(mixture)
    assert isinstance(student, WConditionedEpsFn)
    run = GuidedRun(student, sampler="ddim", steps=STEPS, batch_size=9, data_shape=mixture.data_shape)
    assert run.method == DISTILLED and run.record() == {"distilled": "test student"}
    x = run.samples(labels(), 2.0, seed=3)
    assert run.denoiser_rows() == STEPS * 9  # the wrapper's own rows are inside the student: counted once
    expected = generate_samples(mixture, labels(), w=2.0, sampler="ddim", steps=STEPS, batch_size=9, seed=3)
    assert torch.equal(x, expected)
    with pytest.raises(ValueError, match="outside"):
        run.check([5.0])
    with pytest.raises(ValueError, match="already guided"):
        GuidedRun(student, method="apg", data_shape=mixture.data_shape)


def test_a_guide_of_your_own_counts_the_main_network(mixture):
    guide = make_guide("cfg")
    run = GuidedRun(mixture, method="mine", guide=guide, sampler="ddim", steps=STEPS, batch_size=9)
    run.samples(labels(), 1.0, seed=0)
    assert run.method == "mine" and run.denoiser_rows() == 2 * STEPS * 9


def test_from_options_splits_run_and_sampler_options(mixture):
    run = GuidedRun.from_options(mixture, sampler="ancestral", steps=STEPS, batch_size=3, dtype=torch.float64,
                                 v_interp=0.2, clip_x=False)
    assert run.batch_size == 3 and run.dtype == torch.float64
    assert run.sampler_options == {"v_interp": 0.2, "clip_x": False}


@pytest.mark.parametrize("kwargs, message", [
    ({"interval": (0.5, 2.0), "schedule": lambda w: w}, "not both"),
    ({"interval": (2.0, 0.5)}, "sigma_lo < sigma_hi"),
    ({"sampler": "euler"}, "unknown sampler"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"method": "nope"}, "unknown guidance"),
    ({"guide": make_guide("cfg"), "params": {"phi": 0.1}}, "give guide or params"),
    ({"method": "classifier"}, "needs log_prob_fn"),
    ({"method": "auto"}, "needs guide"),
])
def test_bad_runs_are_refused_in_one_line(mixture, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuidedRun(mixture, **kwargs)


def test_check_refuses_what_the_method_does_not_take_before_any_network_call(mixture):
    calls = []

    def counted(z, logsnr, labels):
        calls.append(z.shape[0])
        return mixture(z, logsnr, labels)

    counted.num_classes, counted.data_shape = mixture.num_classes, mixture.data_shape
    GuidedRun(counted, method="rescale", params={"phi": 0.7}).check([0.0, 1.0, 4.0])
    with pytest.raises(ValueError, match="phi must lie in"):
        GuidedRun(counted, method="rescale", params={"phi": 2.0}).check([1.0])
    with pytest.raises(ValueError, match="finite"):
        GuidedRun(counted).check([float("nan")])
    assert calls == []
