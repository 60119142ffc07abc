"""Scoring a composition of conditions (``cfgdiff eval --compose``): the reference made of some classes is exactly the
statistics of those classes' real images, the term probabilities are the classifier's mean p(c_i | x), one term
(c, +1) at w is scored as plain CFG's samples of class c against class c's real images, and what cannot be scored
is refused in one line."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from cfgdiff.data import load_digits
from cfgdiff.evaluation.features import ClassifierFeatures, DigitsClassifierNet, classifies, load_digits_classifier
from cfgdiff.evaluation.metrics import (
    ImageScorer,
    ReferenceStats,
    feature_statistics,
    frechet_distance,
    pool_rows,
    reference_statistics,
    term_probabilities,
    union_statistics,
)
from cfgdiff.sampling.pipeline import GuidedRun
from cfgdiff.training import load_model
from tests.helpers import assert_usage_error, run_cli


class PixelFeatures:
    """The pixels themselves as features (64-D for digits), uniform class probabilities."""

    name = cache_key = "pixels"

    def __call__(self, x):
        return x.reshape(x.shape[0], -1).to(torch.float64), torch.full((x.shape[0], 10), 0.1)


def test_union_statistics_are_those_of_the_concatenated_rows():
    rng = np.random.default_rng(0)
    groups = [rng.normal(loc=i, scale=1 + i, size=(n, 4)) for i, n in enumerate((7, 1, 0, 30))]
    stats = [feature_statistics(g) if len(g) >= 2 else (g.mean(axis=0) if len(g) else np.full(4, np.nan),
                                                        np.full((4, 4), np.nan)) for g in groups]
    mu, cov = union_statistics([s[0] for s in stats], [s[1] for s in stats], [len(g) for g in groups])
    mu_all, cov_all = feature_statistics(np.concatenate(groups))
    np.testing.assert_allclose(mu, mu_all, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, cov_all, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        union_statistics([np.zeros(4)], [np.eye(4)], [1])


def test_reference_of_classes_is_the_statistics_of_those_classes_real_images(tmp_path, monkeypatch):
    """of_classes([c]) is class c's statistics; of_classes(C) those of the union of C's images, computed directly; of
    all classes the whole split's; its pool is the pool rows of C (labels found again after a cache hit)."""
    import cfgdiff.evaluation.metrics.reference as reference

    monkeypatch.setattr(reference, "POOL_SIZE", 300)  # a pool that is a strict subset of the split
    train = load_digits("train")
    x, labels = train.x, np.asarray(train.labels)
    stats = reference_statistics(train, "train", PixelFeatures(), cache_dir=tmp_path)
    rows = pool_rows(len(train))
    assert rows.size == 300 and stats.pool.shape == (300, 64)
    np.testing.assert_allclose(stats.pool, x[torch.from_numpy(rows)].reshape(300, -1).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(stats.pool_labels, labels[rows])
    cached = reference_statistics(train, "train", PixelFeatures(), cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.pool_labels, stats.pool_labels)

    one = cached.of_classes([3])
    np.testing.assert_allclose(one.mu, stats.class_mu[3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(one.cov, stats.class_cov[3], rtol=0, atol=1e-12)
    assert one.count == (labels == 3).sum() and one.classes == (3,) and one.class_count is None
    assert (one.pool_labels == 3).all() and len(one.pool) == (labels[rows] == 3).sum()
    assert math.isnan(one.inception_score)  # the pool's probabilities are not kept

    some = stats.of_classes([8, 3, 8])
    mu, cov = feature_statistics(x[torch.from_numpy(np.isin(labels, [3, 8]))].reshape(-1, 64))
    np.testing.assert_allclose(some.mu, mu, rtol=0, atol=1e-9)
    np.testing.assert_allclose(some.cov, cov, rtol=0, atol=1e-9)
    assert some.classes == (3, 8) and some.describe("training images") == "training images of classes 3, 8"
    whole = stats.of_classes(range(10))
    np.testing.assert_allclose(whole.mu, stats.mu, rtol=0, atol=1e-9)
    np.testing.assert_allclose(whole.cov, stats.cov, rtol=0, atol=1e-9)
    assert whole.count == stats.count and len(whole.pool) == 300

    with pytest.raises(ValueError, match="class 12 has 0 real examples"):
        stats.of_classes([12])
    with pytest.raises(ValueError, match="no per-class statistics"):
        ReferenceStats(stats.mu, stats.cov, 1.0, stats.count).of_classes([3])


def test_term_probabilities_are_the_mean_class_probability_and_its_standard_error():
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = term_probabilities(probs, [(0, 2.0), (2, -1.0)])
    assert out["term_prob"] == {"0:+2": 0.5, "2:-1": 0.375}
    # std (1/(N-1)) / √N: p(0|x) = 1, 0, 1, 0: std √(1/3); p(2|x) = 0, ½, 0, 1: Σ (p - ⅜)² = 11/16, std √(11/48)
    assert out["term_prob_std"]["0:+2"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert out["term_prob_std"]["2:-1"] == pytest.approx(math.sqrt(11 / 48) / 2)
    with pytest.raises(ValueError, match="outside the classifier's 3 classes"):
        term_probabilities(probs, [(3, 1.0)])


def test_term_probabilities_need_a_classifier_of_the_data_classes():
    digits = load_digits_classifier()
    assert classifies(digits, 10) and not classifies(digits, 3)
    assert not classifies(PixelFeatures(), 10)  # not a classifier of the data (Inception's labels are not either)
    assert classifies(ClassifierFeatures(DigitsClassifierNet(num_classes=3), "x-classifier"), 3)
    reference = ReferenceStats(np.zeros(64), np.eye(64), 1.0, 100)
    with pytest.raises(ValueError, match="number of classes"):
        ImageScorer(digits, reference, terms=[(3, 1.0)])
    with pytest.raises(ValueError, match="class 10 outside"):
        ImageScorer(digits, reference, terms=[(10, 1.0)], num_classes=10)


def _eval(capsys, run_dir, out, *extra):
    code, stdout, err = run_cli(capsys, ["eval", str(run_dir), "--n", "12", "--steps", "3", "--sampler", "ddim",
                                         "--bootstrap", "0", "--grid-per-class", "4", "--out", str(out),
                                         "--no-progress", *extra])
    assert code == 0, err
    return json.loads((out / "results.json").read_text()), stdout


def _samples(run_dir, labels, w, **run_options):
    run = GuidedRun(load_model(run_dir), sampler="ddim", steps=3, sampler_options={"clip_x": 1.0}, batch_size=256,
                    **run_options)
    return run.samples(labels, w, seed=0)


def test_one_term_at_w_is_scored_as_cfg_samples_of_that_class_against_its_real_images(capsys, digits_run, tmp_path,
                                                                                      cache_dir):
    """(3, +1) at w draws CFG's samples of class 3 at w (the same noise streams); its FID is theirs against the
    statistics of class 3's real images, computed here directly, and its p(3 | x) the classifier's mean on them."""
    result, stdout = _eval(capsys, digits_run, tmp_path / "eval", "--compose", "3:+1", "--w", "0,1")
    meta, rows = result["meta"], result["rows"]
    extractor = load_digits_classifier()
    train, test = load_digits("train"), load_digits("test")
    real = {name: extractor(split.x[split.labels == 3])[0] for name, split in
            (("train", train), ("test", test))}
    assert meta["compose"] == "3:+1" and meta["reference_classes"] == [3]
    assert meta["reference_count"] == len(real["train"]) and meta["test_count"] == len(real["test"])
    assert meta["prdc_real_count"] == 12 and "of class 3" in meta["kid_real"]
    labels = torch.full((12,), 3)
    for row in rows:
        feats, probs = extractor(_samples(digits_run, labels, row["w"], method="cfg"))
        mu, cov = feature_statistics(feats)
        assert row["fid"] == pytest.approx(frechet_distance(mu, cov, *feature_statistics(real["train"])), rel=1e-4)
        assert row["fid_test"] == pytest.approx(frechet_distance(mu, cov, *feature_statistics(real["test"])),
                                                rel=1e-4)
        assert row["term_prob"]["3:+1"] == pytest.approx(float(probs[:, 3].mean()), abs=1e-5)
        assert row["fid_per_class"] is None  # a composition's samples have no class of their own
    assert [row["nfe_per_sample"] for row in rows] == [3, 6]  # (3:1) at w = 0 is ε_3 alone
    assert "composition 3:+1: every distance is to the real images of class 3" in stdout
    assert (tmp_path / "eval" / "grids" / "w_1.png").is_file()


def test_a_negative_term_is_measured_beside_the_positive_one(capsys, digits_run, tmp_path, cache_dir):
    """Both terms' probabilities are the classifier's on the composed samples (the null label for every row, as
    cfgdiff sample --compose draws them); the reference holds the positive class only."""
    out = tmp_path / "eval"
    result, stdout = _eval(capsys, digits_run, out, "--compose", "3:+1,8:-1", "--w", "2")
    (row,) = result["rows"]
    x = _samples(digits_run, torch.full((12,), 10), 2.0, method="compose", params={"terms": ((3, 1.0), (8, -1.0))})
    _, probs = load_digits_classifier()(x)
    for key, c in (("3:+1", 3), ("8:-1", 8)):
        assert row["term_prob"][key] == pytest.approx(float(probs[:, c].mean()), abs=1e-5)
        assert row["term_prob_std"][key] == pytest.approx(float(probs[:, c].std() / math.sqrt(12)), abs=1e-5)
    assert result["meta"]["reference_classes"] == [3] and row["nfe_per_sample"] == 9  # 3 rows a step
    assert "p(c_i | x) per term: 3:+1" in stdout
    assert "p(c_i \\| x) per term" in (out / "results.md").read_text()
    with open(out / "results.csv") as f:
        assert json.loads(next(csv.DictReader(f))["term_prob"]).keys() == {"3:+1", "8:-1"}


@pytest.mark.parametrize("terms", ["3:-1", "3:-1,8:0"])
def test_a_composition_without_a_positive_class_is_refused_in_one_line(capsys, digits_run, tmp_path, terms):
    out = tmp_path / "eval"
    assert_usage_error(capsys, ["eval", str(digits_run), "--steps", "2", "--out", str(out), "--no-progress",
                                f"--compose={terms}"], "has no class of positive weight")
    assert not out.exists()

