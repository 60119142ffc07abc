"""Precision/recall, density/coverage, KID and the class-averaged FID: identities derived from their definitions,
blocked distances equal to unblocked ones, equality with the maintained implementations (prdc, torch-fidelity)
on the same features, and precision up / recall down with w on a trained 2-D mixture through the CLI."""

import json

import numpy as np
import pytest
import torch

from cfgdiff.evaluation.metrics import (
    ReferenceStats,
    class_averaged_fid,
    data_key,
    kid,
    kth_neighbour_radii,
    prdc,
    reference_statistics,
)
from cfgdiff.evaluation.metrics.reference import _compute_reference
from tests.evaluation._reference_impls import torch_fidelity_kid
from tests.helpers import run_cli


def _gauss(seed, n, d=6, shift=0.0):
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_a_set_against_itself_has_everything_one():
    """Every point is in its own ball (distance 0 < NND_k), so precision = recall = coverage = 1. Density: point j
    lies in its own ball and in that of each i of whose k - 1 nearest others it is one (strict <: the k-th is on
    the sphere), so the counts sum to N + N (k - 1) = N k and density = 1 exactly (no ties in continuous data)."""
    x = _gauss(0, 300)
    for k, density_k in ((3, 5), (1, 1), (4, 2)):
        r = prdc(x, x, k=k, density_k=density_k)
        assert (r.precision, r.recall, r.coverage) == (1.0, 1.0, 1.0)
        assert r.density == pytest.approx(1.0, abs=1e-12)


def test_two_sets_far_apart_score_zero():
    """A shift far beyond both sets' k-NN radii: no sample in a real ball, no real point in a sample's ball."""
    r = prdc(_gauss(1, 200), _gauss(2, 150, shift=100.0))
    assert (r.precision, r.recall, r.density, r.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_density_of_an_independent_sample_of_the_same_law_is_one():
    """For i.i.d. sample Y and real X_1..X_M, the rank of Y among {Y} ∪ {X_l : l ≠ i} by distance to X_i is uniform
    on 1..M, so P(Y in X_i's k-ball) = k / M and E[density] = (1/k) M k / M = 1. Over 12 independent seeds the mean
    density is 1 within 4 of its standard errors (the spread across seeds / sqrt(12))."""
    values = np.array([prdc(_gauss(2 * s, 400), _gauss(2 * s + 1, 400)).density for s in range(12)])
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert abs(values.mean() - 1.0) < 4 * se
    assert se > 0


def test_blocked_distances_equal_unblocked():
    real, fake = _gauss(3, 257), _gauss(4, 190, shift=0.4)
    whole = prdc(real, fake, block=10_000)
    for block in (1, 7, 64):
        assert prdc(real, fake, block=block) == whole
    radii = kth_neighbour_radii(real, (3, 5), block=10_000)
    d = torch.cdist(torch.from_numpy(real), torch.from_numpy(real))
    direct = torch.sort(d, dim=1).values
    for k in (3, 5):
        np.testing.assert_allclose(kth_neighbour_radii(real, (k,), block=13)[k], radii[k], rtol=1e-12)
        np.testing.assert_allclose(radii[k], direct[:, k], rtol=1e-9, atol=1e-9)


def test_equal_to_prdc_on_the_same_features():
    compute_prdc = pytest.importorskip("prdc").compute_prdc
    real, fake = _gauss(5, 300, d=10).astype(np.float32), _gauss(6, 260, d=10, shift=0.3).astype(np.float32)
    ours = prdc(real, fake, k=3, density_k=5, block=50)
    at_3, at_5 = compute_prdc(real, fake, 3), compute_prdc(real, fake, 5)
    assert ours.precision == pytest.approx(at_3["precision"]) and ours.recall == pytest.approx(at_3["recall"])
    assert ours.density == pytest.approx(at_5["density"]) and ours.coverage == pytest.approx(at_5["coverage"])


def test_kid_equal_to_torch_fidelity_on_the_same_features(monkeypatch):
    kid_features_to_metric = torch_fidelity_kid(monkeypatch)
    fake, real = _gauss(7, 180, d=12, shift=0.2), _gauss(8, 220, d=12)
    mean, std, size = kid(fake, real, subsets=15, subset_size=90, seed=3)
    ref = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=15, kid_subset_size=90,
                                 rng_seed=3, verbose=False)
    assert size == 90
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-10)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-8)


def test_kid_is_zero_within_its_spread_for_one_law_and_positive_for_a_shift():
    """MMD²_u is unbiased, so E KID = 0 when both sets come from one law; the mean over subsets varies no more
    than one subset's estimate (Var of a mean <= the largest variance), so |KID| < 4 kid_std. A shift of 1 in
    every coordinate puts KID many spreads above 0."""
    for seed in range(4):
        same, same_std, _ = kid(_gauss(10 + seed, 600), _gauss(20 + seed, 600), subsets=30, subset_size=200,
                                seed=seed)
        assert abs(same) < 4 * same_std
        shifted, shifted_std, _ = kid(_gauss(30 + seed, 600, shift=1.0), _gauss(40 + seed, 600), subsets=30,
                                      subset_size=200, seed=seed)
        assert shifted > 10 * shifted_std > 0


def _identity_extractor(x):
    return x, torch.softmax(x[:, :3], dim=1)


def test_per_class_statistics_and_fid_of_the_real_classes_is_zero():
    """The streamed per-class (μ_c, Σ_c) are those of each class's rows; the class-averaged FID of the real rows
    themselves against them is 0 (up to the square root's rounding)."""
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 4, 500)
    feats = torch.from_numpy(rng.standard_normal((500, 5)) + labels[:, None])
    stats = _compute_reference([feats[:230], feats[230:]], 500, _identity_extractor, batch_size=64, labels=labels,
                               num_classes=5)  # class 4 has no rows: NaN statistics, no reference
    assert stats.class_count.tolist() == [int((labels == c).sum()) for c in range(4)] + [0]
    for c in range(4):
        np.testing.assert_allclose(stats.class_mu[c], feats[labels == c].numpy().mean(0), atol=1e-10)
        np.testing.assert_allclose(stats.class_cov[c], np.cov(feats[labels == c].numpy(), rowvar=False), atol=1e-10)
    assert stats.class_frechet(4) is None
    refs = [stats.class_frechet(c) for c in range(5)]
    assert class_averaged_fid(feats, labels, refs) == pytest.approx(0.0, abs=1e-6)
    assert class_averaged_fid(feats, (labels + 1) % 4, refs) > 1.0  # the classes swapped: far from 0


def test_per_class_statistics_are_cached_and_an_old_cache_still_loads(tmp_path):
    x = torch.randn(300, 4)

    def load_x(data, split):
        return x

    stats = reference_statistics("fake", "train", _named(_identity_extractor), cache_dir=tmp_path, load_x=load_x)
    assert stats.class_count is None  # images without labels: no per-class statistics
    path = next(tmp_path.glob("refstats-*.npz"))
    assert data_key("fake", None) in path.name
    # a cache file holding only the old keys loads, without per-class statistics
    np.savez(path, mu=stats.mu, cov=stats.cov, inception_score=stats.inception_score, count=stats.count,
             pool=stats.pool)
    again = reference_statistics("fake", "train", _named(_identity_extractor), cache_dir=tmp_path, load_x=load_x)
    assert isinstance(again, ReferenceStats) and again.class_mu is None and again.count == 300


class _named:
    name = cache_key = "identity"

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


def test_precision_rises_and_recall_falls_with_w_on_a_trained_mixture(capsys, gmm_run, tmp_path, cache_dir):
    """Guidance concentrates each class's samples where p(c | x) is high: inside the real manifold (precision up,
    or already near 1) but on less of it (recall and coverage down)."""
    run_dir, _ = gmm_run
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, ["eval", str(run_dir), "--w", "0,2,6", "--n", "600", "--steps", "16",
                                        "--bootstrap", "0", "--out", str(out), "--no-progress"])
    assert code == 0, err
    assert "precision = " in stdout and "recall = " in stdout and "coverage = " in stdout
    results = json.loads((out / "results.json").read_text())
    meta, rows = results["meta"], results["rows"]
    assert meta["prdc_k"] == 3 and meta["density_k"] == 5 and meta["prdc_real_count"] == 600
    assert "held-out points" in meta["prdc_real"]
    p = [r["precision"] for r in rows]
    rec = [(r["recall"], r["recall_std"]) for r in rows]
    assert min(p[1:]) > p[0]
    for (hi, hi_se), (lo, lo_se) in zip(rec, rec[1:], strict=False):
        assert hi - lo > 3 * np.hypot(hi_se, lo_se)
    assert rows[-1]["coverage"] < rows[0]["coverage"]
    assert all(r["kid"] is None and r["fid_per_class"] is None for r in rows)
    md = (out / "results.md").read_text()
    assert "precision (k = 3)" in md and "coverage (k = 5)" in md
