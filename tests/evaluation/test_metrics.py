"""FID and IS identities, the FID bootstrap spread and floors at matched N, memorisation, the 2-D measures, the
shipped digits classifier, reference-statistics caching, the Inception plumbing."""

import math

import numpy as np
import pytest
import torch

from cfgdiff.evaluation.features import FeatureError, InceptionFeatures, load_digits_classifier
from cfgdiff.evaluation.metrics import (
    FrechetReference,
    GuidedDensity,
    bootstrap_fid,
    data_key,
    feature_statistics,
    fid_with_spread,
    frechet_distance,
    inception_score,
    matched_floor,
    mean_log_density,
    metric_names,
    near_copy_detector,
    near_copy_threshold,
    nearest_neighbour_distances,
    paired_bootstrap_difference,
    random_directions,
    reference_statistics,
    sliced_wasserstein,
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
    assert list(tmp_path.glob("refstats-fake-*-train-digits-classifier-*.npz"))
    np.testing.assert_array_equal(first.mu, second.mu)
    np.testing.assert_array_equal(first.cov, second.cov)
    assert first.count == second.count == 50


def test_inception_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FeatureError, match="--inception-weights"):
        InceptionFeatures(tmp_path / "missing.pth")


def test_inception_plumbing_with_random_weights(tmp_path, monkeypatch):
    """torch-fidelity's Inception-v3 with randomly initialised weights written to a file, read back by path."""
    import sys

    from cfgdiff.evaluation.features import _fidelity_inception_class

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


# -- FID spread, reference statistics, floors at matched N ----------------------------------------------------


def test_frechet_reference_equals_frechet_distance():
    rng = np.random.default_rng(5)
    mu_a, mu_b = rng.standard_normal(9), rng.standard_normal(9)
    cov_a, cov_b = _random_spd(rng, 9), _random_spd(rng, 9)
    ref = FrechetReference(mu_b, cov_b)
    assert ref.distance(mu_a, cov_a) == pytest.approx(frechet_distance(mu_a, cov_a, mu_b, cov_b), rel=1e-9)


def test_bootstrap_replicate_is_the_fid_of_the_resampled_rows():
    """The weighted statistics of a replicate equal those of the rows drawn with those multiplicities."""
    rng = np.random.default_rng(6)
    feats = rng.standard_normal((40, 5)) * 3.0 + 7.0
    ref = FrechetReference(np.zeros(5), np.eye(5))
    replicates = bootstrap_fid(feats, [ref], draws=3, seed=11)[:, 0]
    draw = np.random.default_rng(11)
    for b in range(3):
        counts = draw.multinomial(40, np.full(40, 1 / 40))
        rows = np.repeat(feats, counts, axis=0)
        assert replicates[b] == pytest.approx(ref.of_features(rows), rel=1e-9)


def test_fid_bootstrap_spread_shrinks_like_one_over_sqrt_n():
    """Features N(δ, I) against the reference N(0, I), |δ| = 1 (D = 8): FID ≈ |δ|² + 2 δ·(μ̂ - δ) + O(D/N), whose
    linear term has std 2|δ|/√N, so the bootstrap std is ≈ 2/√N and halves from N to 4N. Tolerance: relative
    standard errors 1/√(2(B-1)) from B = 400 replicates and 1/√(2N) from the sample's own spread along δ,
    combined for the ratio, times 4."""
    rng = np.random.default_rng(0)
    dim, draws = 8, 400
    delta = np.zeros(dim)
    delta[0] = 1.0
    ref = FrechetReference(np.zeros(dim), np.eye(dim))
    spreads = {}
    for n in (500, 2000):
        feats = rng.standard_normal((n, dim)) + delta
        spreads[n] = bootstrap_fid(feats, [ref], draws=draws, seed=1)[:, 0].std(ddof=1)
        rel = 4 * math.sqrt(1 / (2 * (draws - 1)) + 1 / (2 * n))
        assert spreads[n] == pytest.approx(2 / math.sqrt(n), rel=rel)
    rel_ratio = 4 * math.sqrt(2 / (2 * (draws - 1)) + 1 / (2 * 500) + 1 / (2 * 2000))
    assert spreads[500] / spreads[2000] == pytest.approx(2.0, rel=rel_ratio)


def test_fid_with_spread_without_bootstrap():
    feats = np.random.default_rng(2).standard_normal((30, 3))
    ref = FrechetReference(np.zeros(3), np.eye(3))
    [(value, std)] = fid_with_spread(feats, [ref], draws=0)
    assert std is None and value == pytest.approx(ref.of_features(feats))


@pytest.mark.parametrize("n", [150, 600])
def test_floor_at_matched_n_is_the_fid_of_independent_real_sets(n):
    """The floor from a pool of M = 300 held-out rows estimates E FID(N independent real rows vs reference):
    by random subsets when N <= M (a random subset of an i.i.d. set is i.i.d.), by the fit a + b/N beyond.
    Averaged over 40 pools and compared with 400 independent N-sets, within 4 combined standard errors."""
    rng = np.random.default_rng(3)
    dim = 8
    ref = FrechetReference(*feature_statistics(rng.standard_normal((20000, dim))))
    direct = np.array([ref.of_features(rng.standard_normal((n, dim))) for _ in range(400)])
    floors = [matched_floor(rng.standard_normal((300, dim)), ref, n, draws=10, seed=s) for s in range(40)]
    methods = {f.method for f in floors}
    assert methods == {"subsets"} if n <= 300 else methods <= {"extrapolated", "lower bound"}
    values = np.array([f.value for f in floors])
    se = math.sqrt(values.var(ddof=1) / values.size + direct.var(ddof=1) / direct.size)
    assert abs(values.mean() - direct.mean()) < 4 * se
    assert values.mean() > 0.5 * direct.mean()  # and not trivially close: the floor is of the right size


def test_extrapolated_floor_is_never_below_the_mean_term():
    """A pool that IS the reference: FID(M) = 0 and subsets fall towards it, so the fit a + b/n crosses 0 below
    some n; the floor at large n is then the bound Tr Σ / n (E||μ̂_n − μ||², which E FID exceeds), marked so."""
    pool = np.random.default_rng(5).standard_normal((300, 3))
    ref = FrechetReference(*feature_statistics(pool))
    floor = matched_floor(pool, ref, 100_000)
    assert floor.method == "lower bound" and floor.std is None
    assert floor.value == pytest.approx(np.trace(np.cov(pool, rowvar=False)) / 100_000) and floor.value > 0
    assert "at least the mean term" in floor.describe("test images", "training split")


def test_matched_floor_subsets_and_whole_pool():
    rng = np.random.default_rng(4)
    pool = rng.standard_normal((50, 3))
    ref = FrechetReference(np.zeros(3), np.eye(3))
    whole = matched_floor(pool, ref, 50)
    assert whole.value == pytest.approx(ref.of_features(pool)) and whole.std is None
    part = matched_floor(pool, ref, 20, draws=7)
    assert part.method == "subsets" and part.draws == 7 and part.std > 0
    with pytest.raises(ValueError, match="n >= 2"):
        matched_floor(pool, ref, 1)


def test_reference_statistics_stream_equals_direct_statistics(tmp_path):
    """Streaming moments over chunks = the statistics of all features at once; the pool holds every row."""
    extractor = load_digits_classifier()
    x = torch.rand(1200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    stats = reference_statistics("fake", "train", extractor, cache_dir=tmp_path, load_x=lambda d, s: x,
                                 batch_size=250)
    feats, probs = extractor(x)
    mu, cov = feature_statistics(feats)
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.cov, cov, rtol=1e-5, atol=1e-6)
    assert stats.count == 1200 and stats.pool.shape == (1200, 64)
    np.testing.assert_allclose(np.sort(stats.pool[:, 0]), np.sort(feats[:, 0].numpy()), rtol=1e-6)
    assert stats.inception_score == pytest.approx(inception_score(probs)[0], rel=1e-6)


def test_reference_statistics_of_a_dataset_are_keyed_by_its_provenance(tmp_path):
    from cfgdiff.data import load_digits

    extractor = load_digits_classifier()
    train, test = load_digits("train"), load_digits("test")
    a = reference_statistics(train, "train", extractor, cache_dir=tmp_path)
    b = reference_statistics("digits", "train", extractor, cache_dir=tmp_path)  # same data by name: cache hit
    assert len(list(tmp_path.glob("refstats-digits-*-train-*.npz"))) == 1
    np.testing.assert_array_equal(a.mu, b.mu)
    reference_statistics(test, "test", extractor, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("refstats-digits-*.npz"))) == 2
    assert data_key("digits", train.source) != data_key("digits", test.source)


# -- memorisation ---------------------------------------------------------------------------------------------


def test_nearest_neighbour_distances_match_brute_force_across_chunks():
    g = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 256, (301, 1, 4, 4), generator=g, dtype=torch.uint8)
    queries = torch.rand(37, 1, 4, 4, generator=g) * 2 - 1

    def to_x(rows):
        return rows.to(torch.float32) / 127.5 - 1

    dist, idx = nearest_neighbour_distances(queries, reference, to_x=to_x, reference_chunk=64, query_chunk=10)
    full = torch.cdist(queries.reshape(37, -1).double(), to_x(reference).reshape(301, -1).double())
    torch.testing.assert_close(dist, full.min(dim=1).values, rtol=0, atol=1e-9)
    torch.testing.assert_close(idx, full.argmin(dim=1))
    exact_copy = to_x(reference[[5, 300]])
    assert nearest_neighbour_distances(exact_copy, reference, to_x=to_x, reference_chunk=64)[0].tolist() == [0, 0]


def test_near_copy_threshold_leaves_at_most_the_quantile_below():
    d = np.arange(1, 1001, dtype=np.float64)[::-1]  # 1000 distinct distances
    tau = near_copy_threshold(d, 0.01)
    assert tau == 10.0 and (d < tau).mean() == 0.009 and (d >= tau).mean() >= 0.99
    with pytest.raises(ValueError, match="quantile"):
        near_copy_threshold(d, 1.5)


def test_memorisation_of_fresh_held_out_points_is_about_one_percent():
    """τ = the k-th smallest of M calibration distances (k = ⌈0.01 M⌉); by exchangeability a fresh held-out point
    falls below it with probability k/(M + 1). The share of n fresh points has std √(p(1-p)) √(1/M + 1/n)
    (τ's own quantile level varies like a Beta(k, M - k + 1), then n binomial draws); allowed: 4 std."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(2000, 16, generator=g)
    calibration, fresh = torch.randn(4000, 16, generator=g), torch.randn(4000, 16, generator=g)
    tau = near_copy_threshold(nearest_neighbour_distances(calibration, train)[0].numpy())
    share = float((nearest_neighbour_distances(fresh, train)[0] < tau).double().mean())
    p = math.ceil(0.01 * 4000) / 4001
    assert abs(share - p) < 4 * math.sqrt(p * (1 - p) * (1 / 4000 + 1 / 4000))


def test_memorisation_on_digits_training_test_and_noise(tmp_path):
    """Training images are copies of themselves (100 %), the calibration test images fall below τ for fewer than
    1 % by construction, uniform noise is no copy of anything (0 %)."""
    from cfgdiff.data import load_digits

    train, test = load_digits("train"), load_digits("test")
    detector = near_copy_detector(train, test, cache_dir=tmp_path)
    assert detector.threshold > 0
    assert detector.share(train.x) == 1.0
    assert detector.share(test.x) == pytest.approx(detector.test_share) and detector.test_share < 0.01
    assert detector.test_share >= (math.ceil(0.01 * len(test)) - 1 - 2) / len(test)  # ties aside, k - 1 below
    noise = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert detector.share(noise) == 0.0
    assert list(tmp_path.glob("nndist-digits-*.npz"))  # the calibration distances are cached
    assert near_copy_detector(train, test, cache_dir=tmp_path).threshold == detector.threshold


# -- 2-D measures: sliced Wasserstein, the exact guided density ----------------------------------------------


def test_sliced_wasserstein_identities():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64)
    y = torch.randn(250, 3, generator=g, dtype=torch.float64) * 1.5 + 0.3
    theta = random_directions(3, 200, seed=4)
    assert sliced_wasserstein(x, x, directions=theta) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x, y, directions=theta) == pytest.approx(sliced_wasserstein(y, x, directions=theta))
    assert sliced_wasserstein(2.5 * x, 2.5 * y, directions=theta) == pytest.approx(
        2.5 * sliced_wasserstein(x, y, directions=theta), rel=1e-10)
    t = torch.tensor([0.6, -0.3, 0.2], dtype=torch.float64)
    for p in (1.0, 2.0):  # a translation moves every projection by θ·t
        expected = float(((theta @ t).abs() ** p).mean() ** (1 / p))
        assert sliced_wasserstein(x, x + t, directions=theta, p=p) == pytest.approx(expected, rel=1e-10)
    # over the sphere E(θ·t)² = |t|²/D: with L random directions, (θ·t)² has mean |t|²/D and variance
    # 2|t|⁴/(D(D+2)) - (|t|²/D)² ... bounded by |t|⁴/D·(2/(D+2)); 5 standard errors of the mean of L = 4000
    many = random_directions(3, 4000, seed=1)
    sw2 = sliced_wasserstein(x, x + t, directions=many) ** 2
    tol = 5 * float(t.norm() ** 2) * math.sqrt(2 / (3 * 5) / 4000)
    assert sw2 == pytest.approx(float(t.norm() ** 2) / 3, abs=tol)


def test_sliced_wasserstein_in_one_dimension_is_wasserstein():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(300), rng.standard_normal(170) * 2 + 1
    wa, wb = rng.uniform(0.1, 1, 300), rng.uniform(0.1, 1, 170)
    assert sliced_wasserstein(a[:, None], b[:, None], p=1, projections=3) == pytest.approx(
        wasserstein_distance(a, b), rel=1e-10)
    assert sliced_wasserstein(a[:, None], b[:, None], p=1, x_weights=wa, y_weights=wb) == pytest.approx(
        wasserstein_distance(a, b, wa, wb), rel=1e-10)
    # W2 of equal-size sets is the root mean squared difference of the sorted values
    c = rng.standard_normal(300)
    assert sliced_wasserstein(a[:, None], c[:, None], p=2) == pytest.approx(
        math.sqrt(np.mean((np.sort(a) - np.sort(c)) ** 2)), rel=1e-10)


def test_guided_density_normalisation_and_entropy():
    """w = 0: p̃ is the class Gaussian, so log Z = 0 and -H = -log(2πe s²) in 2-D; for w > 0 the tilt is
    normalised on the grid (log Z < 0: p(c|x)^w <= 1) and exact samples of w = 0 score -H within 5 standard errors."""
    from cfgdiff.core.toy import GaussianMixture

    mixture = GaussianMixture.three_gaussians()
    s = float(mixture.stds[0, 0])
    unguided = GuidedDensity(mixture, 0.0)
    torch.testing.assert_close(unguided.log_normaliser, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-9)
    expected = -math.log(2 * math.pi * math.e * s * s)
    torch.testing.assert_close(unguided.negative_entropy, torch.full((3,), expected, dtype=torch.float64),
                               rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3000) % 3
    x = mixture.sample(labels, g)
    mean, se = mean_log_density(unguided, x, labels)
    assert abs(mean - expected) < 5 * se
    guided = GuidedDensity(mixture, 3.0)
    assert bool((guided.log_normaliser < 0).all())
    assert guided.target_mean(labels) > expected  # guidance sharpens each class: lower entropy


def test_paired_bootstrap_difference_identities():
    """Replicate b is FID(a[idx]) - FID(b[idx]) for one resample idx applied to both sets; a set against itself
    differs by exactly 0; for strongly correlated sets (b = a + small noise) the paired spread is far below the
    unpaired √(s_a² + s_b²)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((300, 6)) + 0.5
    b = a + 0.05 * rng.standard_normal((300, 6))
    ref = FrechetReference(np.zeros(6), np.eye(6))
    diffs = paired_bootstrap_difference(a, b, ref, draws=50, seed=2)
    draw = np.random.default_rng(2)
    for k in range(3):
        counts = draw.multinomial(300, np.full(300, 1 / 300))
        expected = ref.of_features(np.repeat(a, counts, axis=0)) - ref.of_features(np.repeat(b, counts, axis=0))
        assert diffs[k] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert np.all(paired_bootstrap_difference(a, a, ref, draws=5) == 0.0)
    unpaired = bootstrap_fid(a, [ref], draws=50, seed=3)[:, 0].std(ddof=1), bootstrap_fid(b, [ref], draws=50,
                                                                                             seed=4)[:, 0].std(ddof=1)
    assert diffs.std(ddof=1) < 0.2 * math.hypot(*unpaired)
    with pytest.raises(ValueError, match="same number of rows"):
        paired_bootstrap_difference(a, b[:10], ref)
