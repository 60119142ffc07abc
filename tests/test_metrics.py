"""FID and IS identities, the shipped digits classifier, reference-statistics caching, the Inception plumbing."""

import math

import numpy as np
import pytest
import torch

from cfgdiff.features import FeatureError, InceptionFeatures, load_digits_classifier
from cfgdiff.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    metric_names,
    reference_statistics,
)

METHODS = ("eigh", "sqrtm")


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


@pytest.mark.parametrize("method", METHODS)
def test_fid_zero_for_identical_statistics(method):
    rng = np.random.default_rng(0)
    mu, cov = rng.standard_normal(16), _random_spd(rng, 16)
    assert frechet_distance(mu, cov, mu, cov, method=method) == pytest.approx(0.0, abs=1e-8 * np.trace(cov))


@pytest.mark.parametrize("method", METHODS)
def test_fid_is_squared_mean_distance_for_equal_covariances(method):
    rng = np.random.default_rng(1)
    mu_a, mu_b, cov = rng.standard_normal(12), rng.standard_normal(12), _random_spd(rng, 12)
    expected = float(np.sum((mu_a - mu_b) ** 2))
    assert frechet_distance(mu_a, cov, mu_b, cov, method=method) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_fid_matches_closed_form_for_commuting_covariances(method):
    # Σ_a = Q diag(a) Qᵀ, Σ_b = Q diag(b) Qᵀ commute, so (Σ_a Σ_b)^{1/2} = Q diag(sqrt(a b)) Qᵀ and
    # FID = ||Δμ||² + Σ_i (sqrt(a_i) - sqrt(b_i))².
    rng = np.random.default_rng(2)
    dim = 20
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a, b = rng.uniform(0.05, 3.0, dim), rng.uniform(0.05, 3.0, dim)
    mu_a, mu_b = rng.standard_normal(dim), rng.standard_normal(dim)
    expected = float(np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    for rot in (np.eye(dim), q):  # diagonal, then rotated
        cov_a, cov_b = rot @ np.diag(a) @ rot.T, rot @ np.diag(b) @ rot.T
        assert frechet_distance(mu_a, cov_a, mu_b, cov_b, method=method) == pytest.approx(expected, rel=1e-6)


def test_fid_is_symmetric_and_methods_agree():
    rng = np.random.default_rng(3)
    mu_a, mu_b = rng.standard_normal(10), rng.standard_normal(10)
    cov_a, cov_b = _random_spd(rng, 10), _random_spd(rng, 10)
    ab = frechet_distance(mu_a, cov_a, mu_b, cov_b)
    assert frechet_distance(mu_b, cov_b, mu_a, cov_a) == pytest.approx(ab, rel=1e-9)
    assert frechet_distance(mu_a, cov_a, mu_b, cov_b, method="sqrtm") == pytest.approx(ab, rel=1e-6)


def test_fid_of_singular_covariances_is_finite():
    # fewer samples than dimensions: rank-deficient covariances, where sqrtm needs its ε-offset fallback
    rng = np.random.default_rng(4)
    fa, fb = rng.standard_normal((5, 30)), rng.standard_normal((5, 30)) + 1.0
    (mu_a, cov_a), (mu_b, cov_b) = feature_statistics(fa), feature_statistics(fb)
    for method in METHODS:
        value = frechet_distance(mu_a, cov_a, mu_b, cov_b, method=method)
        assert math.isfinite(value) and value > 0


def test_feature_statistics_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))


def test_inception_score_uniform_is_one():
    probs = np.full((100, 10), 0.1)
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_inception_score_of_confident_even_predictions_is_k(k):
    # one-hot predictions, each class equally often in every split: KL(onehot || uniform) = log K
    probs = np.eye(k)[np.arange(k * 20) % k]
    mean, _ = inception_score(probs, splits=10 if k * 2 <= 20 else 1)
    assert mean == pytest.approx(k, rel=1e-12)
    assert inception_score(torch.from_numpy(probs), splits=1)[0] == pytest.approx(k, rel=1e-12)


def test_metric_names_say_which_network():
    assert metric_names("digits-classifier") == ("FID (digits-classifier features)", "IS (digits classifier)")
    assert metric_names("Inception-v3") == ("FID", "IS")


def test_shipped_digits_classifier_reaches_stated_accuracy():
    from cfgdiff.data import load_digits

    extractor = load_digits_classifier()
    stated = extractor.test_accuracy
    assert stated is not None and stated >= 0.97
    test = load_digits("test")
    feats, probs = extractor(test.x)
    assert feats.shape == (len(test), 64) and probs.shape == (len(test), 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(test)))
    accuracy = float((probs.argmax(1) == test.labels).float().mean())
    assert accuracy >= stated - 1e-6


def test_reference_statistics_are_cached(tmp_path):
    extractor = load_digits_classifier()
    calls = []

    def load_x(data, split):
        calls.append((data, split))
        g = torch.Generator().manual_seed(0)
        return torch.rand(50, 1, 8, 8, generator=g) * 2 - 1

    first = reference_statistics("fake", "train", extractor, cache_dir=tmp_path, load_x=load_x)
    second = reference_statistics("fake", "train", extractor, cache_dir=tmp_path, load_x=load_x)
    assert calls == [("fake", "train")]
    assert list(tmp_path.glob("refstats-fake-train-digits-classifier-*.npz"))
    np.testing.assert_array_equal(first.mu, second.mu)
    np.testing.assert_array_equal(first.cov, second.cov)
    assert first.count == second.count == 50


def test_inception_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FeatureError, match="--inception-weights"):
        InceptionFeatures(tmp_path / "missing.pth")


def test_inception_plumbing_with_random_weights(tmp_path, monkeypatch):
    """torch-fidelity's Inception-v3 with randomly initialised weights written to a file, read back by path."""
    import sys

    from cfgdiff.features import _fidelity_inception_class

    try:
        network_cls = _fidelity_inception_class()
    except FeatureError as err:
        pytest.skip(f"optional package torch-fidelity not usable here: {err}")
    module = sys.modules[network_cls.__module__]
    with monkeypatch.context() as m:  # build the architecture without fetching or loading weights
        m.setattr(module, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(network_cls, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = network_cls("inception-v3-compat", ["2048"])
    path = tmp_path / "random-inception.pth"
    torch.save(net.state_dict(), path)
    extractor = InceptionFeatures(path)
    assert extractor.name == "Inception-v3" and extractor.cache_key.startswith("inception-v3-")
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1  # grey digits -> RGB
    feats, probs = extractor(x)
    assert feats.shape == (2, 2048) and probs.shape == (2, 1008)
    assert torch.isfinite(feats).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
