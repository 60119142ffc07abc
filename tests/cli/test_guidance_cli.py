"""``--guidance METHOD`` in ``cfgdiff sample`` and ``cfgdiff eval``: every method runs, network evaluations are
counted, and every bad parameter is one line and exit 2 with nothing written."""

import json

import numpy as np
import pytest

from cfgdiff.runtime.checkpoint import load_checkpoint, save_checkpoint
from cfgdiff.training import CHECKPOINT_FILE
from tests.helpers import assert_usage_error, run_cli


@pytest.fixture(scope="module")
def other_shape_run(digits_run, tmp_path_factory):
    """The digits run's weights declared for 16x16 images: the same 10 classes, another data shape (the U-Net's
    weights do not depend on the image size)."""
    groups, meta = load_checkpoint(digits_run / CHECKPOINT_FILE)
    meta["model_config"]["image_shape"] = [1, 16, 16]
    meta["data_shape"] = [1, 16, 16]
    run_dir = tmp_path_factory.mktemp("other_shape_run")
    save_checkpoint(run_dir / CHECKPOINT_FILE, model=groups["model"], ema=groups.get("ema") or None, metadata=meta)
    return run_dir


# network rows per sample for `--steps 2 --sampler ddim` at the two weights of each method
SAMPLE_CASES = {
    "cfg": (["--w", "0,2"], [2, 4]),
    "rescale": (["--w", "0,2", "--rescale-phi", "0.5"], [2, 4]),
    "thresholding": (["--w", "0,2", "--threshold-percentile", "99"], [2, 4]),
    "apg": (["--w", "0,2", "--apg-eta", "0", "--apg-r", "inf", "--apg-beta", "-0.5"], [2, 4]),
    "cfgpp": (["--w=-1,0"], [4, 4]),  # CFG++ needs ε_u at every step, also at w = 0 (its λ = 1)
    "cfg-zero": (["--w", "0,2", "--cfg-zero-steps", "1"], [2, 2]),  # the zero-init step calls no network
    "auto": (["--w", "0,2", "--guide-run", "RUN"], [2, 4]),  # main + guide network, B rows each
}


@pytest.mark.parametrize("method", list(SAMPLE_CASES))
def test_sample_with_every_method(capsys, digits_run, tmp_path, method):
    extra, nfe = SAMPLE_CASES[method]
    extra = [str(digits_run) if e == "RUN" else e for e in extra]
    out = tmp_path / "grid.png"
    code, stdout, err = run_cli(capsys, ["sample", str(digits_run), "--n-per-class", "1", "--steps", "2", "--sampler",
                                        "ddim", "--out", str(out), "--no-progress", "--guidance", method, *extra])
    assert code == 0, err
    data = np.load(out.with_suffix(".npz"))
    assert str(data["guidance"]) == method
    assert list(data["nfe_per_sample"]) == nfe
    assert np.isfinite(data["samples"]).all() and np.abs(data["samples"]).max() <= 1.0


def test_eval_with_a_method_records_it(capsys, digits_run, tmp_path):
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, ["eval", str(digits_run), "--w", "0,2", "--n", "10", "--steps", "2", "--sampler",
                                   "ddim", "--guidance", "apg", "--apg-r", "inf", "--apg-beta", "0", "--bootstrap", "0",
                                   "--grid-per-class", "1", "--out", str(out), "--no-progress"])
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert [row["guidance"] for row in result["rows"]] == ["apg", "apg"]
    assert [row["nfe_per_sample"] for row in result["rows"]] == [2.0, 4.0]
    assert result["meta"]["guidance"] == "apg"
    assert result["meta"]["guidance_params"] == {"eta": 0.0, "r": "inf", "beta": 0.0}  # recommended η kept
    assert "--guidance apg --apg-r inf --apg-beta 0" in result["meta"]["command"]
    md = (out / "results.md").read_text()
    assert "Adaptive projected guidance" in md and "guidance: apg (eta = 0, r = inf, beta = 0)" in md


def test_eval_autoguidance_counts_both_networks(capsys, digits_run, tmp_path):
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, ["eval", str(digits_run), "--w", "0,2", "--n", "10", "--steps", "2", "--sampler",
                                   "ddim", "--guidance", "auto", "--guide-run", str(digits_run), "--bootstrap", "0",
                                   "--grid-per-class", "1", "--out", str(out), "--no-progress"])
    assert code == 0, err
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [row["nfe_per_sample"] for row in rows] == [2.0, 4.0]
    assert "guide model:" in (out / "results.md").read_text()


BAD = [
    (["--guidance", "rescale", "--rescale-phi", "1.5"], "--rescale-phi must lie in [0, 1]"),
    (["--guidance", "rescale", "--rescale-phi", "-0.1"], "--rescale-phi must lie in [0, 1]"),
    (["--guidance", "thresholding", "--threshold-percentile", "0"], "--threshold-percentile must lie in (0, 100]"),
    (["--guidance", "thresholding", "--threshold-percentile", "100.5"], "--threshold-percentile must lie in"),
    (["--guidance", "apg", "--apg-r", "0"], "--apg-r must be > 0"),
    (["--guidance", "apg", "--apg-r", "-1"], "--apg-r must be > 0"),
    (["--guidance", "apg", "--apg-beta", "nan"], "--apg-beta"),
    (["--guidance", "cfg-zero", "--cfg-zero-steps", "-1"], "--cfg-zero-steps"),
    (["--guidance", "cfgpp", "--w=-2,0"], "CFG++ takes w >= -1"),
    (["--guidance", "bogus"], "--guidance must be one of cfg, rescale"),
    (["--rescale-phi", "0.5"], "--rescale-phi goes with --guidance rescale"),
    (["--guidance", "apg", "--guide-run", "RUN"], "--guide-run goes with --guidance auto"),
    (["--guidance", "auto"], "needs --guide-run"),
    (["--guidance", "auto", "--guide-run", "GMM"], "has 3 classes, the model 10"),
    (["--guidance", "auto", "--guide-run", "OTHER"], "makes samples of shape (1, 16, 16), the model (1, 8, 8)"),
    (["--guidance", "auto", "--guide-run", "NOWHERE"], "no checkpoint"),
    (["--guidance", "classifier"], "needs --classifier"),
]


@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize(("extra", "needle"), BAD)
def test_bad_guidance_input_is_one_line_and_writes_nothing(capsys, digits_run, gmm_run, other_shape_run, tmp_path,
                                                           command, extra, needle):
    names = {"RUN": str(digits_run), "GMM": str(gmm_run[0]), "OTHER": str(other_shape_run),
             "NOWHERE": str(tmp_path / "nowhere")}
    extra = [names.get(e, e) for e in extra]
    out = tmp_path / ("grid.png" if command == "sample" else "eval")
    argv = [command, str(digits_run), "--steps", "2", "--out", str(out), "--no-progress", *extra]
    if command == "sample":
        argv += ["--n-per-class", "1"]
    assert_usage_error(capsys, argv, needle)
    assert not out.exists() and not out.with_suffix(".npz").exists()
