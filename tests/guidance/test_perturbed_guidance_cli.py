"""``--guidance pag`` / ``--guidance skip-layer`` through ``cfgdiff sample``, ``eval`` and ``info``: the rows a step
costs, the layers recorded, the neutral setting against plain CFG, and every bad parameter one line and exit 2."""

import json

import numpy as np
import pytest

from tests.helpers import assert_usage_error, run_cli

CASES = {  # method: (its flags, network rows per sample for --steps 2 at w = 0 and w = 2)
    "pag": (["--pag-scale", "1.5", "--pag-layers", "mid.0,down.2"], [4, 6]),
    "skip-layer": (["--slg-scale", "1", "--skip-layers", "mid.1"], [4, 6]),
}


def _sample(capsys, run_dir, out, *extra):
    return run_cli(capsys, ["sample", str(run_dir), "--n-per-class", "1", "--steps", "2", "--sampler", "ddim",
                            "--out", str(out), "--no-progress", *extra])


@pytest.mark.parametrize("method", list(CASES))
def test_sample_with_a_perturbation_method(capsys, digits_run, tmp_path, method):
    flags, nfe = CASES[method]
    out = tmp_path / "grid.png"
    code, _, err = _sample(capsys, digits_run, out, "--w", "0,2", "--guidance", method, *flags)
    assert code == 0, err
    data = np.load(out.with_suffix(".npz"))
    assert str(data["guidance"]) == method
    assert list(data["nfe_per_sample"]) == nfe  # 2B rows per step at w = 0 (no null rows), 3B at w = 2
    assert np.isfinite(data["samples"]).all()


def test_pag_scale_0_samples_as_plain_cfg(capsys, digits_run, tmp_path):
    code, _, err = _sample(capsys, digits_run, tmp_path / "cfg.png", "--w", "2")
    assert code == 0, err
    code, _, err = _sample(capsys, digits_run, tmp_path / "pag.png", "--w", "2", "--guidance", "pag", "--pag-scale",
                           "0")
    assert code == 0, err
    plain, neutral = np.load(tmp_path / "cfg.npz"), np.load(tmp_path / "pag.npz")
    np.testing.assert_array_equal(neutral["samples"], plain["samples"])
    assert list(neutral["nfe_per_sample"]) == list(plain["nfe_per_sample"])


def test_eval_records_the_method_scale_and_default_layers(capsys, digits_run, tmp_path):
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, ["eval", str(digits_run), "--w", "0,1", "--n", "10", "--steps", "2", "--sampler",
                                   "ddim", "--guidance", "pag", "--pag-scale", "2", "--bootstrap", "0",
                                   "--grid-per-class", "1", "--out", str(out), "--no-progress"])
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert [row["guidance"] for row in result["rows"]] == ["pag", "pag"]
    assert [row["nfe_per_sample"] for row in result["rows"]] == [4.0, 6.0]
    assert result["meta"]["guidance_params"] == {"scale": 2.0, "layers": "mid.0"}  # the U-Net's default


def test_info_lists_the_layers_each_method_can_perturb(capsys, digits_run):
    code, out, err = run_cli(capsys, ["info", str(digits_run)])
    assert code == 0, err
    assert "pag layers (--pag-layers): down.2, mid.0, up.0, up.1 (default mid.0)" in out
    assert "skip-layer layers (--skip-layers): down.0, mid.0, mid.1 (default mid.0)" in out


@pytest.mark.parametrize(("extra", "needle"), [
    (["--guidance", "pag", "--pag-layers", "nope"], "no layer 'nope' to perturb with attention-identity; available: "
                                                    "down.2, mid.0, up.0, up.1"),
    (["--guidance", "skip-layer", "--skip-layers", "up.0"], "available: down.0, mid.0, mid.1"),
    (["--guidance", "pag", "--pag-scale", "-1"], "--pag-scale must be >= 0"),
    (["--guidance", "skip-layer", "--slg-scale", "nan"], "--slg-scale must be a finite number"),
    (["--guidance", "pag", "--pag-layers", ","], "--pag-layers takes comma-separated layer names"),
    (["--pag-scale", "1"], "--pag-scale goes with --guidance pag, not --guidance cfg"),
    (["--guidance", "pag", "--skip-layers", "mid.0"], "--skip-layers goes with --guidance skip-layer"),
])
def test_bad_perturbation_parameters_are_one_line_and_exit_2(capsys, digits_run, tmp_path, extra, needle):
    out = tmp_path / "grid.png"
    assert_usage_error(capsys, ["sample", str(digits_run), "--n-per-class", "1", "--steps", "2", "--out", str(out),
                                "--no-progress", *extra], needle)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("method", list(CASES))
def test_a_network_without_the_switch_is_one_line_and_exit_2(capsys, gmm_run, tmp_path, method):
    assert_usage_error(capsys, ["sample", str(gmm_run[0]), "--n-per-class", "1", "--steps", "2", "--out",
                                str(tmp_path / "x.png"), "--guidance", method],
                       f"--guidance {method}: MLPDenoiser cannot perturb its layers")
    assert not list(tmp_path.iterdir())
