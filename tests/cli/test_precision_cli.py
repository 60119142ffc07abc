"""--precision / --memory-format on the commands: an unavailable bf16 is one line and exit 2 with nothing written;
the old switches are aliases; what the network ran in is recorded (results.json meta, the .npz, train's line)."""

import json

import numpy as np
import pytest

from cfgdiff.runtime import precision
from cfgdiff.runtime.checkpoint import read_metadata
from cfgdiff.training import CHECKPOINT_FILE
from tests.helpers import assert_usage_error, run_cli


@pytest.fixture()
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)


@pytest.fixture()
def has_bf16(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)


@pytest.mark.parametrize("flag", [["--precision", "bf16"], ["--autocast"]])
def test_bf16_without_the_hardware_is_one_line_and_writes_nothing(capsys, tmp_path, digits_run, no_bf16, flag):
    out = tmp_path / "out"
    assert_usage_error(capsys, ["sample", digits_run, "--out", out / "g.png", "--no-progress", *flag],
                       "bf16 is not available")
    assert_usage_error(capsys, ["train", "--data", "gmm2d", "--steps", "2", "--run-dir", out / "run", "--no-progress",
                                *flag], "bf16 is not available")
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "tune", "serve"])
def test_every_sampling_command_refuses_an_unavailable_bf16(capsys, tmp_path, digits_run, no_bf16, command):
    assert_usage_error(capsys, [command, digits_run, "--precision", "bf16", "--out", tmp_path / "o"]
                       if command != "serve" else [command, digits_run, "--precision", "bf16"],
                       "bf16 is not available")
    assert not (tmp_path / "o").exists()


def test_old_and_new_flags_that_disagree_are_refused(capsys, tmp_path, digits_run):
    assert_usage_error(capsys, ["sample", digits_run, "--out", tmp_path / "g.png", "--precision", "fp32",
                                "--autocast"], "contradicts")


@pytest.mark.parametrize("flags, expected", [
    ([], ("fp32", "contiguous")),
    (["--precision", "bf16"], ("bf16", "contiguous")),
    (["--autocast", "--channels-last"], ("bf16", "channels-last")),  # the old switches
])
def test_sample_records_the_form(capsys, tmp_path, digits_run, has_bf16, flags, expected):
    out = tmp_path / "g.png"
    code, stdout, err = run_cli(capsys, ["sample", digits_run, "--n-per-class", "1", "--steps", "2", "--sampler",
                                         "ddim", "--out", out, "--no-progress", *flags])
    assert code == 0, err
    data = np.load(out.with_suffix(".npz"))
    assert (str(data["precision"]), str(data["memory_format"])) == expected
    assert f"network in {expected[0]}" in stdout


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_eval_runs_in_the_precision_asked_and_records_it(capsys, tmp_path, digits_run, has_bf16, name):
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, ["eval", digits_run, "--w", "0,1", "--n", "10", "--steps", "2", "--sampler", "ddim",
                                   "--bootstrap", "0", "--grid-per-class", "1", "--out", out, "--no-progress",
                                   "--precision", name])
    assert code == 0, err
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["network"] == {"precision": name, "memory_format": "contiguous", "chosen_by": "asked",
                               "compiled": False}
    assert f"--precision {name}" in meta["command"]


def test_eval_auto_without_bf16_runs_fp32(capsys, tmp_path, digits_run, no_bf16, cache_dir):
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, ["eval", digits_run, "--w", "1", "--n", "10", "--steps", "2", "--sampler", "ddim",
                                   "--bootstrap", "0", "--grid-per-class", "1", "--out", out, "--no-progress",
                                   "--precision", "auto", "--memory-format", "contiguous"])
    assert code == 0, err
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["network"]["precision"] == "fp32" and meta["network"]["chosen_by"] == "only candidate"


def test_train_records_the_form_and_resume_may_change_it(capsys, tmp_path, has_bf16):
    run_dir = tmp_path / "run"
    base = ["train", "--data", "gmm2d", "--batch-size", "32", "--run-dir", run_dir,
            "--no-progress", "--checkpoint-every", "2"]
    code, out, err = run_cli(capsys, [*base, "--steps", "2", "--precision", "bf16"])
    assert code == 0, err
    assert "bf16 autocast" in out + err
    meta = read_metadata(run_dir / CHECKPOINT_FILE)
    assert meta["network_form"]["precision"] == "bf16" and meta["train_config"]["precision"] == "bf16"
    code, out, err = run_cli(capsys, [*base, "--steps", "4", "--resume", "--no-autocast"])  # the old switch
    assert code == 0, err
    meta = read_metadata(run_dir / CHECKPOINT_FILE)
    assert meta["network_form"]["precision"] == "fp32" and meta["train_config"]["precision"] == "fp32"


@pytest.mark.parametrize("command", ["sample", "eval", "tune", "serve"])
def test_every_sampling_command_reads_the_shared_options(command):
    from cfgdiff.cli.config_file import command_parser
    from cfgdiff.cli.network_options import network_options

    args = command_parser(command).parse_args(["RUN", "--precision", "auto", "--memory-format", "channels-last",
                                               "--compile"])
    assert network_options(args) == {"precision": "auto", "memory_format": "channels-last", "compile_network": True}
    plain = command_parser(command).parse_args(["RUN"])
    assert network_options(plain) == {"precision": "fp32", "memory_format": "contiguous", "compile_network": False}


@pytest.mark.parametrize("command", ["train", "train-classifier", "train-features", "distill"])
def test_every_training_command_reads_the_shared_options(command):
    from cfgdiff.cli.config_file import command_parser
    from cfgdiff.cli.training_options import loop_changes

    parser = command_parser(command)
    required = [] if command != "distill" else ["T", "--run-dir", "S"]
    changes = loop_changes(parser.parse_args([*required, "--precision", "auto", "--channels-last", "--compile"]))
    assert (changes["precision"], changes["memory_format"], changes["compile"]) == ("auto", "channels-last", True)
    assert loop_changes(parser.parse_args(required))["precision"] is None  # not given: --resume keeps the run's


def test_compile_puts_inductors_cache_under_cfgdiffs(monkeypatch, cache_dir, digits_run):
    import os

    from cfgdiff.sampling.generate import prepare_eps_fn
    from cfgdiff.training import load_model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
    prepared = prepare_eps_fn(load_model(digits_run), compile_network="eager")  # the plumbing, no C++ compiler
    assert prepared.network is not prepared.eps_fn
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache_dir / "inductor")
