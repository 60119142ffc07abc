"""Evaluation sweeps: eval's sampling loop, classifier guidance = CFG with exact scores end to end, the CLI."""

import csv
import json
import math

import pytest
import torch

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.evaluation.metrics import ReferenceStats, feature_statistics, inception_score
from cfgdiff.evaluation.sweep import balanced_labels, run_sweep
from cfgdiff.guidance import cfg, make_guide
from cfgdiff.sampling.generate import generate_samples, iter_samples
from cfgdiff.training.classifier import ClassifierConfig, train_classifier
from tests.helpers import assert_usage_error, run_cli


class ExactMixtureFeatures:
    """A feature extractor for the 2-D mixture: x itself, and the exact Bayes classifier at the data end."""

    name = "exact-mixture"
    cache_key = "exact-mixture"

    def __init__(self, mixture: GaussianMixture) -> None:
        self.mixture = mixture

    def __call__(self, x):
        x = x.to(torch.float64)
        probs = self.mixture.class_log_prob(x, torch.full((x.shape[0],), 40.0, dtype=torch.float64)).exp()
        return x, probs


def test_iter_samples_chunks_equal_generate_samples_with_the_same_seed():
    mixture = GaussianMixture.three_gaussians()
    labels = balanced_labels(50, mixture.num_classes)
    chunks = list(iter_samples(mixture, labels, w=1.0, steps=8, seed=7, batch_size=16, dtype=torch.float64))
    assert [c.shape[0] for c in chunks] == [16, 16, 16, 2]
    whole = generate_samples(mixture, labels, w=1.0, steps=8, seed=7, batch_size=50, dtype=torch.float64)
    torch.testing.assert_close(torch.cat(chunks), whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_classifier_guidance_with_exact_classifier_equals_cfg_through_eval(sampler):
    """With exact scores, ε - w σ ∇ log p(c|z) = (1+w) ε(z,c) - w ε(z): identical sweeps, row by row."""
    mixture = GaussianMixture.three_gaussians()
    extractor = ExactMixtureFeatures(mixture)
    gen = torch.Generator().manual_seed(0)
    data = mixture.sample(mixture.sample_labels(3000, gen), gen)
    mu, cov = feature_statistics(data)
    _, probs = extractor(data)
    reference = ReferenceStats(mu, cov, inception_score(probs)[0], 3000)
    kwargs = dict(n=300, steps=24, extractor=extractor, reference=reference, sampler=sampler, seed=3,
                  batch_size=128, dtype=torch.float64)
    ws = [0.0, 1.0, 3.0]
    by_cfg = run_sweep(mixture, ws, guidance="cfg", **kwargs)
    by_classifier = run_sweep(mixture, ws, guidance="classifier", log_prob_fn=mixture.log_prob_fn, **kwargs)
    for a, b in zip(by_cfg.rows, by_classifier.rows, strict=True):
        assert a.fid == pytest.approx(b.fid, rel=1e-6, abs=1e-9)
        assert a.inception_score == pytest.approx(b.inception_score, rel=1e-6)
        # network evaluations are counted: a guided CFG step is 2 rows, a classifier step 1 row + 1 fwd/bwd
        assert a.nfe_per_sample == (24 if a.w == 0 else 48)
        assert b.nfe_per_sample == 24 and b.classifier_evals_per_sample == (0 if b.w == 0 else 24)
    # guidance does what the paper says on the exact mixture: the Bayes classifier grows more confident
    scores = [r.inception_score for r in by_cfg.rows]
    assert scores[0] < scores[1] < scores[2]
    # and the samples themselves agree, not only their statistics
    labels = balanced_labels(60, 3)
    x_cfg = torch.cat(list(iter_samples(mixture, labels, w=2.0, steps=24, sampler=sampler, seed=1,
                                         dtype=torch.float64, guide=cfg)))
    by_classifier_guide = make_guide("classifier", log_prob_fn=mixture.log_prob_fn)
    x_cls = torch.cat(list(iter_samples(mixture, labels, w=2.0, steps=24, sampler=sampler, seed=1,
                                         dtype=torch.float64, guide=by_classifier_guide)))
    torch.testing.assert_close(x_cls, x_cfg, rtol=1e-9, atol=1e-9)


def test_eval_writes_table_plots_and_grids(capsys, digits_run, tmp_path, cache_dir):
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, ["eval", str(digits_run), "--w", "0,1", "--n", "20", "--steps", "3",
                                        "--batch-size", "8", "--grid-per-class", "1", "--out", str(out),
                                        "--no-progress"])
    assert code == 0
    assert "FID (digits-classifier features)" in stdout and "IS (digits classifier)" in stdout
    assert "floor" in stdout
    assert "warning: --n 20 is below 500" in err  # too few samples to trust: said, not silently scored
    assert "results.json" in stdout and "grids_all.png" in stdout  # the summary names every file written
    for name in ("results.csv", "results.md", "results.json", "tradeoff.png", "metrics_vs_w.png",
                 "grids/w_0.png", "grids/w_1.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["w"]) for r in rows] == [0.0, 1.0]
    assert all(int(r["n"]) == 20 and int(r["steps"]) == 3 and r["sampler"] == "ancestral" for r in rows)
    assert [float(r["nfe_per_sample"]) for r in rows] == [3.0, 6.0]
    md = (out / "results.md").read_text()
    assert "floor vs training split: 20 held-out test images against the training split statistics" in md
    assert "floor vs test split: 20 training images against the test split statistics" in md
    assert "| real (floor) |" in md and "near-copies" in md
    assert "cfgdiff eval" in md
    assert "N = 20" in stdout and "vs test split" in stdout  # N beside every FID, both references named
    results = json.loads((out / "results.json").read_text())
    meta = results["meta"]
    assert meta["fid_floor"] > 0 and list(cache_dir.glob("refstats-digits-*.npz"))
    assert meta["floor_count"] == 20 and meta["fid_floor_method"] == "subsets" and meta["fid_test_floor"] > 0
    assert meta["fid_floor_whole_test_count"] == 360 and meta["fid_bootstrap"] == 100
    assert meta["memorisation_threshold"] > 0 and meta["memorisation_test_share"] < 0.01
    assert meta["prdc_k"] == 3 and meta["density_k"] == 5 and meta["prdc_real_count"] == 20
    assert meta["kid_subset_size"] == 20 and meta["kid_subsets"] == 100 and meta["fid_per_class_classes"] == 10
    for row in results["rows"]:
        assert row["fid_std"] > 0 and row["fid_test"] > 0 and row["fid_test_std"] > 0
        assert 0 <= row["memorised"] <= 1 and row["sliced_wasserstein"] is None
        for key in ("precision", "recall", "coverage"):  # in the digits-classifier features, vs 20 pool rows
            assert 0 <= row[key] <= 1 and row[f"{key}_std"] >= 0
        assert row["density"] >= 0 and math.isfinite(row["kid"]) and row["kid_std"] >= 0
        assert row["fid_per_class"] > 0
    first, second = results["rows"]  # differences against the first row, with their paired spread
    assert meta["fid_delta_baseline_w"] == 0.0 and first["fid_delta"] is None
    assert second["fid_delta"] == pytest.approx(second["fid"] - first["fid"]) and second["fid_delta_std"] > 0
    assert "Δ vs w = 0 (paired)" in md


def test_eval_with_classifier_guidance(capsys, digits_run, tmp_path, cache_dir):
    classifier_dir = tmp_path / "classifier"
    train_classifier(ClassifierConfig(steps=2, batch_size=8, base_channels=8, checkpoint_every=2), classifier_dir)
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, ["eval", str(digits_run), "--w", "0,2", "--n", "10", "--steps", "2",
                                   "--guidance", "classifier", "--classifier", str(classifier_dir),
                                   "--grid-per-class", "1", "--out", str(out), "--no-progress"])
    assert code == 0, err
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["classifier_evals_per_sample"]) for r in rows] == [0.0, 2.0]
    assert [float(r["nfe_per_sample"]) for r in rows] == [2.0, 2.0]
    assert "classifier:" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--guidance", "bogus"], "--guidance must be one of cfg, rescale"),
        (["--guidance", "classifier"], "needs --classifier"),
        (["--guidance", "classifier", "--classifier", "NOWHERE"], "no noisy classifier"),
        (["--n", "1"], "--n must be >= 2"),
        (["--inception-weights", "NOWHERE.pth"], "--inception-weights"),
        (["--features", "NOWHERE"], "no feature network"),
        (["--bootstrap", "1"], "--bootstrap"),
        (["--w", "0,nan"], "finite"),
    ],
)
def test_eval_bad_input_is_exit_2_and_one_line(capsys, digits_run, tmp_path, extra, needle):
    extra = [str(tmp_path / e) if e.startswith("NOWHERE") else e for e in extra]
    out = tmp_path / "eval"
    assert_usage_error(capsys, ["eval", str(digits_run), "--out", str(out), "--no-progress", *extra], needle)
    assert not out.exists()


def test_eval_missing_run_is_exit_2(capsys, tmp_path):
    assert_usage_error(capsys, ["eval", str(tmp_path / "no-run"), "--no-progress"], "no checkpoint")


def test_eval_refuses_two_feature_networks(capsys, digits_run, tmp_path):
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not used")
    assert_usage_error(capsys, ["eval", str(digits_run), "--inception-weights", str(weights), "--features",
                                str(tmp_path), "--out", str(tmp_path / "eval"), "--no-progress"], "give one")


# -- 2-D data: sliced Wasserstein distance and the exact guided density --------------------------------------


def test_exact_mixture_at_w0_scores_at_its_floor_and_guidance_moves_away():
    """The exact eps_fn of the testbed at w = 0 samples the data distribution (up to 64 steps of discretisation):
    its SW_2 to held-out points is that of real points of the same N (the floor) within 4 combined spreads, and
    its mean log-density is -H of the (unguided) class densities within 5 standard errors (+ the discretisation
    allowance of 0.02 nats). At w = 3 the samples leave the data distribution: SW_2 beyond the floor's spread."""
    from cfgdiff.data import load_gmm2d
    from cfgdiff.evaluation.metrics import VectorScorer

    mixture = GaussianMixture.three_gaussians()
    train, test = load_gmm2d("train"), load_gmm2d("test")
    scorer = VectorScorer(test.x, test.labels, 3, train=train.x, train_labels=train.labels, mixture=mixture,
                          bootstrap=20, floor_draws=10)
    result = run_sweep(mixture, [0.0, 3.0], n=600, steps=64, scorer=scorer, dtype=torch.float64, batch_size=300)
    meta = result.meta
    unguided, guided = result.rows
    assert meta["kind"] == "vectors" and unguided.fid is None and len(unguided.sliced_wasserstein_per_class) == 3
    spread = math.sqrt(unguided.sliced_wasserstein_std ** 2 + meta["sw_floor_std"] ** 2)
    assert abs(unguided.sliced_wasserstein - meta["sw_floor"]) < 4 * spread
    assert abs(unguided.log_density - unguided.log_density_target) < 5 * unguided.log_density_std + 0.02
    assert guided.sliced_wasserstein > meta["sw_floor"] + 4 * math.sqrt(guided.sliced_wasserstein_std ** 2 +
                                                                         meta["sw_floor_std"] ** 2)
    assert guided.log_density_target > unguided.log_density_target  # p̃_3 is sharper than p(x|c)
    assert set(result.points) == {0.0, 3.0} and result.points[0.0][0].shape == (600, 2)


def test_eval_on_a_2d_run_end_to_end(capsys, gmm_run, tmp_path, cache_dir):
    run_dir, _ = gmm_run
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, ["eval", str(run_dir), "--w", "0,2", "--n", "150", "--steps", "16",
                                        "--bootstrap", "10", "--out", str(out), "--no-progress"])
    assert code == 0, err
    assert "Inception" not in stdout + err
    assert "warning: --n 150 is below 500" in err
    assert "SW_2" in stdout and "N = 150" in stdout and "mean log p̃_w(x|c)" in stdout
    for name in ("results.csv", "results.md", "results.json", "tradeoff.png", "metrics_vs_w.png", "samples.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "grids").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["kind"] == "vectors" and results["meta"]["sw_floor"] > 0
    for row in results["rows"]:
        assert row["fid"] is None and row["inception_score"] is None
        assert row["sliced_wasserstein"] > 0 and row["sliced_wasserstein_std"] > 0
        assert len(row["sliced_wasserstein_per_class"]) == 3
        assert math.isfinite(row["log_density"]) and math.isfinite(row["log_density_target"])
    md = (out / "results.md").read_text()
    assert "SW_2 to held-out, N = 150" in md and "| real (floor) |" in md


def test_eval_of_a_2d_run_refuses_a_feature_network(capsys, gmm_run, tmp_path):
    run_dir, _ = gmm_run
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not used")
    out = tmp_path / "eval"
    assert_usage_error(capsys, ["eval", str(run_dir), "--inception-weights", str(weights), "--out", str(out),
                                "--no-progress"], "not images")
    assert not out.exists()
