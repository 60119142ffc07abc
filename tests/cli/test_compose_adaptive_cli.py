"""``--compose``, ``--guidance adaptive`` and ``--guidance linear-ag`` through ``cfgdiff sample`` / ``eval``: the
rows each costs, the neutral settings equal to plain CFG, the CLI equal to the Python API, and bad input one line,
exit 2, nothing written."""

import json

import numpy as np
import pytest
import torch

from cfgdiff.guidance.compose import describe_terms, parse_terms
from cfgdiff.sampling.pipeline import GuidedRun
from cfgdiff.training import load_model
from tests.helpers import assert_usage_error, run_cli


def _sample(capsys, run_dir, out, *extra):
    code, stdout, err = run_cli(capsys, ["sample", str(run_dir), "--steps", "4", "--sampler", "ddim", "--out",
                                         str(out), "--no-progress", *extra])
    assert code == 0, err
    return np.load(out.with_suffix(".npz")), stdout


@pytest.mark.parametrize("spelling", [["--compose", "3:+2,8:-1"], ["--compose=3:+2,8:-1"]])
def test_sample_compose_is_one_panel_of_n_at_k_plus_1_rows_per_step(capsys, digits_run, tmp_path, spelling):
    data, _ = _sample(capsys, digits_run, tmp_path / "grid.png", "--n-per-class", "5", *spelling)
    assert str(data["guidance"]) == "compose"
    assert list(data["w"]) == [0.0]  # the composition as written
    assert data["samples"].shape == (1, 5, 1, 8, 8)
    assert list(data["nfe_per_sample"]) == [3 * 4]  # two conditions and ∅: 3 rows a step
    assert (tmp_path / "grid.png").exists()


def test_sample_compose_negative_weight_first_needs_equals(capsys, digits_run, tmp_path):
    data, _ = _sample(capsys, digits_run, tmp_path / "grid.png", "--n-per-class", "2", "--compose=3:-1,8:+2")
    assert list(data["nfe_per_sample"]) == [12]


def test_one_composed_class_at_w_is_cfg_on_that_class(capsys, digits_run, tmp_path):
    composed, _ = _sample(capsys, digits_run, tmp_path / "a.png", "--n-per-class", "3", "--compose", "3:1",
                          "--w", "0,1.5")
    plain, _ = _sample(capsys, digits_run, tmp_path / "b.png", "--n-per-class", "3", "--classes", "3",
                       "--w", "0,1.5")
    np.testing.assert_allclose(composed["samples"], plain["samples"], rtol=0, atol=1e-5)  # the same noise streams
    assert list(composed["nfe_per_sample"]) == [4, 8]  # (3:1) at w = 0 is ε_3 alone


@pytest.mark.parametrize(("method", "flag"), [("adaptive", "--adaptive-gamma"), ("linear-ag", "--linear-ag-full")])
def test_neutral_settings_sample_as_plain_cfg_exactly(capsys, digits_run, tmp_path, method, flag):
    guided, _ = _sample(capsys, digits_run, tmp_path / "a.png", "--n-per-class", "2", "--w", "2",
                        "--guidance", method, flag, "1")
    plain, _ = _sample(capsys, digits_run, tmp_path / "b.png", "--n-per-class", "2", "--w", "2")
    assert np.array_equal(guided["samples"], plain["samples"])
    assert list(guided["nfe_per_sample"]) == [8]


@pytest.mark.parametrize(("method", "flag", "value", "params"), [
    ("adaptive", "--adaptive-gamma", "0.99", {"gamma": 0.99}),
    ("linear-ag", "--linear-ag-full", "0.5", {"full_fraction": 0.5})])
def test_the_cli_counts_what_the_python_api_counts(capsys, digits_run, tmp_path, method, flag, value, params):
    data, _ = _sample(capsys, digits_run, tmp_path / "a.png", "--n-per-class", "2", "--w", "2",
                      "--guidance", method, flag, value)
    model = load_model(digits_run)
    run = GuidedRun(model, method=method, params=params, sampler="ddim", steps=4, sampler_options={"clip_x": 1.0},
                    batch_size=256)
    labels = torch.arange(10).repeat_interleave(2)
    x = run.samples(labels, 2.0, seed=0)
    assert data["nfe_per_sample"][0] == run.denoiser_rows() / 20 <= 8
    np.testing.assert_allclose(data["samples"][0], x.numpy(), rtol=0, atol=1e-6)
    if method == "linear-ag":
        assert data["nfe_per_sample"][0] == 6  # 2 full steps of 4, then B rows


def test_eval_records_adaptive_and_its_nfe(capsys, digits_run, tmp_path):
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, ["eval", str(digits_run), "--w", "0,2", "--n", "10", "--steps", "4", "--sampler",
                                   "ddim", "--guidance", "linear-ag", "--linear-ag-full", "0.5", "--bootstrap", "0",
                                   "--grid-per-class", "1", "--out", str(out), "--no-progress"])
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert [row["nfe_per_sample"] for row in result["rows"]] == [4.0, 6.0]
    assert result["meta"]["guidance_params"] == {"full_fraction": 0.5}
    assert "--guidance linear-ag --linear-ag-full 0.5" in result["meta"]["command"]


BAD = [
    (["--compose", "3"], "CLASS:WEIGHT"),
    (["--compose", "3:x"], "must be a signed number"),
    (["--compose", "3:+1,,8:-1"], "CLASS:WEIGHT"),
    (["--compose", "seven:1"], "no class named 'seven'"),
    (["--compose", "12:1"], "class 12 outside [0, 10)"),
    (["--compose=3:inf"], "must be finite"),
    (["--compose", "-3:1"], "class -3 outside [0, 10)"),  # read as a value, not an option
    (["--guidance", "apg", "--compose", "3:1"], "--compose is its own guidance"),
    (["--guidance", "compose"], "needs --compose"),
    (["--guidance", "adaptive", "--adaptive-gamma", "1.5"], "--adaptive-gamma must lie in (0, 1]"),
    (["--guidance", "adaptive", "--adaptive-gamma", "0"], "--adaptive-gamma must lie in (0, 1]"),
    (["--guidance", "adaptive", "--adaptive-gamma", "nan"], "--adaptive-gamma"),
    (["--guidance", "linear-ag", "--linear-ag-full", "0"], "--linear-ag-full must lie in (0, 1]"),
    (["--adaptive-gamma", "0.9"], "--adaptive-gamma goes with --guidance adaptive"),
    (["--guidance", "adaptive", "--linear-ag-full", "0.5"], "--linear-ag-full goes with --guidance linear-ag"),
]


@pytest.mark.parametrize(("extra", "needle"), BAD)
def test_bad_input_in_sample_is_one_line_and_writes_nothing(capsys, digits_run, tmp_path, extra, needle):
    out = tmp_path / "grid.png"
    assert_usage_error(capsys, ["sample", str(digits_run), "--steps", "2", "--n-per-class", "1", "--out", str(out),
                                "--no-progress", *extra], needle)
    assert not out.exists() and not out.with_suffix(".npz").exists()


@pytest.mark.parametrize(("command", "extra", "needle"), [
    ("eval", ["--compose", "3:-1"], "has no class of positive weight"),
    ("eval", ["--guidance", "adaptive", "--adaptive-gamma", "2"], "--adaptive-gamma must lie in (0, 1]"),
    ("sample", ["--compose", "3:1", "--classes", "3"], "--classes does not go with --compose")])
def test_compose_refusals_are_one_line(capsys, digits_run, tmp_path, command, extra, needle):
    out = tmp_path / ("grid.png" if command == "sample" else "eval")
    assert_usage_error(capsys, [command, str(digits_run), "--steps", "2", "--out", str(out), "--no-progress", *extra],
                       needle)
    assert not out.exists()


@pytest.mark.parametrize("command, needle", [("sample", "2-D data"), ("eval", "image data only")])
def test_compose_on_2d_data_is_refused(capsys, gmm_run, tmp_path, command, needle):
    out = tmp_path / ("grid.png" if command == "sample" else "eval")
    assert_usage_error(capsys, [command, str(gmm_run[0]), "--steps", "2", "--out", str(out), "--no-progress",
                                "--compose", "0:1,2:-1"], needle)
    assert not out.exists()


def test_terms_parse_class_names_and_round_trip():
    names = ("T-shirt", "Trouser", "Pullover")
    terms = parse_terms("trouser:+2, 0:-1.5,Pullover:0.25", names)
    assert terms == ((1, 2.0), (0, -1.5), (2, 0.25))
    assert parse_terms(describe_terms(terms), names) == terms
