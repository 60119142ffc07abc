"""Guidance wrappers: derived equalities with exact scores, and the network-call contract."""

import math

import pytest
import torch

from cfgdiff.guidance import (
    cfg,
    classifier_guidance,
    guidance_interval,
    implicit_classifier_grad,
    scale_from_w,
    w_from_scale,
)
from cfgdiff.guidance.counting import CountingEpsFn
from cfgdiff.sampling.solvers import sample_ancestral, sample_ddim
from tests.helpers import RowNet


def _inputs(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    logsnr = torch.linspace(-8, 8, n, dtype=torch.float64)
    labels = torch.arange(n) % 3
    return z, logsnr, labels


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0, 4.0, -1.0])
def test_cfg_with_exact_scores_equals_classifier_guidance_with_bayes_classifier(gm, w):
    z, logsnr, labels = _inputs()
    guided_cfg = cfg(gm, w)(z, logsnr, labels)
    guided_cls = classifier_guidance(gm, gm.log_prob_fn, w)(z, logsnr, labels)
    torch.testing.assert_close(guided_cfg, guided_cls, rtol=1e-9, atol=1e-10)


def test_cfg_endpoints(gm):
    z, logsnr, labels = _inputs()
    torch.testing.assert_close(cfg(gm, 0.0)(z, logsnr, labels), gm(z, logsnr, labels))
    torch.testing.assert_close(cfg(gm, -1.0)(z, logsnr, labels), gm(z, logsnr, torch.full_like(labels, 3)))


def test_implicit_classifier_gradient_equals_analytic(gm):
    z, logsnr, labels = _inputs()
    torch.testing.assert_close(implicit_classifier_grad(gm, z, logsnr, labels),
                               gm.class_log_prob_grad(z, logsnr, labels), rtol=1e-8, atol=1e-9)


def test_classifier_guidance_works_under_inference_mode(gm):
    z, logsnr, labels = _inputs()
    expected = classifier_guidance(gm, gm.log_prob_fn, 2.0)(z, logsnr, labels)
    with torch.inference_mode():
        got = classifier_guidance(gm, gm.log_prob_fn, 2.0)(z, logsnr, labels)
    torch.testing.assert_close(got, expected)


def test_batched_cfg_equals_two_calls_and_counts_calls():
    net = RowNet().double()
    z, logsnr, labels = _inputs()
    counted = CountingEpsFn(net)
    w = 2.5
    with torch.no_grad():
        batched = cfg(counted, w)(z, logsnr, labels)
        two = (1 + w) * net(z, logsnr, labels) - w * net(z, logsnr, torch.full_like(labels, 3))
    torch.testing.assert_close(batched, two, rtol=1e-12, atol=1e-12)
    assert counted.calls == 1 and counted.batch_sizes == [2 * z.shape[0]]


@pytest.mark.parametrize("sampler", [sample_ancestral, sample_ddim])
def test_one_call_per_step_unguided_and_one_batched_call_guided(sampler):
    net = RowNet()
    labels = torch.tensor([0, 1, 2, 0])
    for w, rows in ((0.0, 4), (1.5, 8)):
        counted = CountingEpsFn(net)
        sampler(cfg(counted, w), (4, 2), labels, steps=7, generator=torch.Generator().manual_seed(0))
        assert counted.calls == 7
        assert counted.batch_sizes == [rows] * 7


def test_guidance_interval_schedule_and_calls():
    net = RowNet()
    schedule = guidance_interval(2.0, logsnr_lo=-3.0, logsnr_hi=4.0)
    assert schedule(-3.0) == 2.0 and schedule(4.0) == 2.0 and schedule(0.0) == 2.0
    assert schedule(-3.1) == 0.0 and schedule(4.1) == 0.0
    counted = CountingEpsFn(net)
    guided = cfg(counted, schedule)
    z, labels = torch.randn(2, 2), torch.tensor([0, 1])
    guided(z, torch.full((2,), 10.0), labels)
    guided(z, torch.full((2,), 0.0), labels)
    assert counted.batch_sizes == [2, 4]


def test_weight_validation_and_scale_convention():
    net = RowNet()
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            cfg(net, bad)
    assert w_from_scale(7.5) == 6.5 and scale_from_w(0.0) == 1.0
