"""Evaluation sweeps: eval's sampling loop, classifier guidance = CFG with exact scores end to end, the CLI."""

import csv
import json

import pytest
import torch

from cfgdiff.classifier import ClassifierConfig, train_classifier
from cfgdiff.cli import main
from cfgdiff.evaluation import balanced_labels, classifier_guide, run_sweep
from cfgdiff.generate import generate_samples, iter_samples
from cfgdiff.guidance import cfg
from cfgdiff.metrics import ReferenceStats, feature_statistics, inception_score
from cfgdiff.toy import GaussianMixture


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
    x_cls = torch.cat(list(iter_samples(mixture, labels, w=2.0, steps=24, sampler=sampler, seed=1,
                                         dtype=torch.float64, guide=classifier_guide(mixture.log_prob_fn))))
    torch.testing.assert_close(x_cls, x_cfg, rtol=1e-9, atol=1e-9)


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_usage_error(capsys, argv, needle):
    code, _, err = _run(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("cfgdiff: error:"), err
    assert needle in lines[0], lines[0]


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_eval_writes_table_plots_and_grids(capsys, digits_run, tmp_path, cache_dir):
    out = tmp_path / "eval"
    code, stdout, err = _run(capsys, ["eval", str(digits_run), "--w", "0,1", "--n", "20", "--steps", "3",
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
    assert "floor: FID (digits-classifier features) between the digits test split and the training split" in md
    assert "cfgdiff eval" in md
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["fid_floor"] > 0 and list(cache_dir.glob("refstats-digits-*.npz"))


def test_eval_with_classifier_guidance(capsys, digits_run, tmp_path, cache_dir):
    classifier_dir = tmp_path / "classifier"
    train_classifier(ClassifierConfig(steps=2, batch_size=8, base_channels=8, checkpoint_every=2), classifier_dir)
    out = tmp_path / "eval"
    code, _, err = _run(capsys, ["eval", str(digits_run), "--w", "0,2", "--n", "10", "--steps", "2",
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
        (["--guidance", "bogus"], "--guidance must be cfg or classifier"),
        (["--guidance", "classifier"], "needs --classifier"),
        (["--guidance", "classifier", "--classifier", "NOWHERE"], "no noisy classifier"),
        (["--n", "1"], "--n must be >= 2"),
        (["--inception-weights", "NOWHERE.pth"], "--inception-weights"),
        (["--w", "0,nan"], "finite"),
    ],
)
def test_eval_bad_input_is_exit_2_and_one_line(capsys, digits_run, tmp_path, extra, needle):
    extra = [str(tmp_path / e) if e.startswith("NOWHERE") else e for e in extra]
    out = tmp_path / "eval"
    _assert_usage_error(capsys, ["eval", str(digits_run), "--out", str(out), "--no-progress", *extra], needle)
    assert not out.exists()


def test_eval_missing_run_is_exit_2(capsys, tmp_path):
    _assert_usage_error(capsys, ["eval", str(tmp_path / "no-run"), "--no-progress"], "no checkpoint")
