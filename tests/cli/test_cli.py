"""The command line: the main paths write what they promise; every bad input is one line and exit 2."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cfgdiff.training import CHECKPOINT_FILE, Trainer
from tests.helpers import assert_usage_error, run_cli


def test_sample_writes_grid_and_npz(capsys, digits_run, tmp_path):
    out = tmp_path / "grid.png"
    code, stdout, _ = run_cli(capsys, [
        "sample", str(digits_run), "--w", "0,1,3", "--n-per-class", "2", "--steps", "3",
        "--sampler", "ddim", "--out", str(out), "--no-progress",
    ])
    assert code == 0
    image = Image.open(out)
    assert min(image.size) > 0
    data = np.load(out.with_suffix(".npz"))
    assert data["samples"].shape == (3, 20, 1, 8, 8)
    assert list(data["w"]) == [0.0, 1.0, 3.0]
    assert np.abs(data["samples"]).max() <= 1.0
    assert list(data["labels"][:4]) == [0, 0, 1, 1]


def test_sample_guidance_scale_is_w_plus_one(capsys, digits_run, tmp_path):
    out = tmp_path / "g.png"
    code, _, _ = run_cli(capsys, ["sample", str(digits_run), "--guidance-scale", "1,2.5", "--classes", "3",
                                 "--n-per-class", "1", "--steps", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    assert list(np.load(out.with_suffix(".npz"))["w"]) == [0.0, 1.5]


def test_sample_vector_data_draws_scatter(capsys, gmm_run, tmp_path):
    run_dir, _ = gmm_run
    out = tmp_path / "gmm.png"
    code, _, _ = run_cli(capsys, ["sample", str(run_dir), "--w", "0,2", "--n-per-class", "50", "--steps", "16",
                                 "--out", str(out), "--no-progress"])
    assert code == 0 and out.exists()
    assert np.load(out.with_suffix(".npz"))["samples"].shape == (2, 150, 2)


def test_toy_figure(capsys, tmp_path):
    out = tmp_path / "toy.png"
    code, _, _ = run_cli(capsys, ["toy", "--w", "0,3", "--n-per-class", "50", "--steps", "16", "--out", str(out)])
    assert code == 0 and Image.open(out).size[0] > 0


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data", "mnist"], "mnist"),
    (["train", "--data", "gmm2d", "--p-uncond", "1.5"], "p-uncond"),
    (["train", "--data", "gmm2d", "--p-uncond", "-0.1"], "p-uncond"),
    (["train", "--data", "gmm2d", "--steps", "0"], "steps"),
    (["toy", "--w", "nan"], "finite"),
    (["toy", "--w", "0,inf"], "finite"),
    (["toy", "--steps", "0"], "steps"),
    (["toy", "--v-interp", "1.2"], "v-interp"),
    (["toy", "--sampler", "euler"], "euler"),
    (["frobnicate"], None),
])
def test_bad_arguments(capsys, tmp_path, argv, needle):
    os.chdir(tmp_path)
    assert_usage_error(capsys, argv, needle=needle)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("extra, needle", [
    (["--sampler", "euler_a"], "euler_a"),  # not a cfgdiff sampler (heun now is)
    (["--classes", "10"], "10"),
    (["--classes", "-1"], "-1"),
    (["--w", "0,nan"], "finite"),
    (["--steps", "0"], "steps"),
    (["--v-interp", "-0.5"], "v-interp"),
    (["--w", "1", "--guidance-scale", "2"], "not allowed"),
])
def test_bad_sample_arguments_write_nothing(capsys, digits_run, tmp_path, extra, needle):
    out = tmp_path / "never.png"
    assert_usage_error(capsys, ["sample", str(digits_run), "--out", str(out), "--no-progress", *extra],
                       needle=needle)
    assert not out.exists() and not out.with_suffix(".npz").exists()


def test_bad_checkpoints(capsys, tmp_path, digits_run):
    assert_usage_error(capsys, ["sample", str(tmp_path / "nowhere")], needle="no checkpoint")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (digits_run / CHECKPOINT_FILE).read_bytes()
    (truncated / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    assert_usage_error(capsys, ["sample", str(truncated)], needle="truncated")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / CHECKPOINT_FILE).write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.")
    assert_usage_error(capsys, ["sample", str(pickled)], needle="safetensors")
    assert not (truncated / "samples").exists() and not (pickled / "samples").exists()


def test_train_refuses_existing_run_and_resumes(capsys, tmp_path):
    run_dir = tmp_path / "run"
    base = ["train", "--data", "gmm2d", "--run-dir", str(run_dir), "--batch-size", "16", "--no-progress"]
    assert run_cli(capsys, [*base, "--steps", "4"])[0] == 0
    before = (run_dir / CHECKPOINT_FILE).read_bytes()
    assert_usage_error(capsys, [*base, "--steps", "4"], needle="already holds a run")
    assert (run_dir / CHECKPOINT_FILE).read_bytes() == before
    assert_usage_error(capsys, ["train", "--data", "gmm2d", "--run-dir", str(tmp_path / "none"), "--resume"],
                       needle="nothing to resume")
    code, out, _ = run_cli(capsys, [*base, "--steps", "6", "--resume"])
    assert code == 0 and "step 6" in out
    assert run_cli(capsys, [*base, "--steps", "2", "--overwrite"])[0] == 0


def test_train_nonfinite_loss_exits_1_and_keeps_checkpoint(capsys, tmp_path, monkeypatch):
    original = Trainer.loss_on_batch
    monkeypatch.setattr(Trainer, "loss_on_batch",
                        lambda self, x, c: original(self, x, c) * (math.nan if self.step >= 5 else 1.0))
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--data", "gmm2d", "--run-dir", str(run_dir), "--steps", "20",
                                   "--batch-size", "8", "--checkpoint-every", "4", "--no-progress"])
    assert code == 1 and "loss is nan" in err and "Traceback" not in err
    from cfgdiff.runtime.checkpoint import read_metadata
    assert read_metadata(run_dir / CHECKPOINT_FILE)["step"] == 4


def test_python_dash_m_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cfgdiff", "sample", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no checkpoint" in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "cfgdiff", "sample", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    assert "s = w + 1" in help_text and "(1+w)" in help_text


# -- what a new user tripped over (issue 13) ------------------------------------------------------------


@pytest.mark.parametrize("command", [["train", "--data", "gmm2d"], ["sample", "RUN"], ["eval", "RUN"],
                                     ["train-classifier"]])
@pytest.mark.parametrize("dev", ["mps", "cuda:7", "xla", "nonsense"])
def test_unavailable_device_is_one_line_and_writes_nothing(capsys, tmp_path, command, dev, digits_run):
    os.chdir(tmp_path)
    argv = [str(digits_run) if a == "RUN" else a for a in command]
    assert_usage_error(capsys, [*argv, "--device", dev], needle="device")
    assert not any(tmp_path.iterdir())


def _train_gmm(capsys, run_dir, *extra):
    return run_cli(capsys, ["train", "--data", "gmm2d", "--run-dir", str(run_dir), "--batch-size", "16",
                           "--no-progress", *extra])


def test_resume_honours_optimisation_flags_and_records_them(capsys, tmp_path):
    import json

    run_dir = tmp_path / "run"
    assert _train_gmm(capsys, run_dir, "--steps", "4")[0] == 0
    code, out, err = run_cli(capsys, ["train", "--run-dir", str(run_dir), "--resume", "--steps", "6",
                                     "--lr", "0.01", "--batch-size", "8", "--no-progress"])
    assert code == 0, err
    assert "on gmm2d" in err and "batch 8" in err and "lr 0.01" in err  # the banner says what really runs
    config = json.loads((run_dir / "config.json").read_text())
    assert config["lr"] == 0.01 and config["batch_size"] == 8 and config["steps"] == 6
    events = [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]
    resume = [e for e in events if e.get("event") == "resume"]
    assert resume and resume[-1]["step"] == 4
    assert resume[-1]["changed"] == {"steps": [4, 6], "lr": [0.001, 0.01], "batch_size": [16, 8]}


@pytest.mark.parametrize("extra, needle", [
    ([], "nothing left to train"),
    (["--steps", "3"], "nothing left to train"),
    (["--steps", "4"], "nothing left to train"),
    (["--data", "digits", "--steps", "8"], "--data cannot change"),
    (["--p-uncond", "0.5", "--steps", "8"], "--p-uncond cannot change"),
    (["--seed", "3", "--steps", "8"], "--seed cannot change"),
    (["--base-channels", "8", "--steps", "8"], "--model cannot change"),
])
def test_resume_refuses_what_cannot_change_or_has_nothing_to_do(capsys, tmp_path, extra, needle):
    run_dir = tmp_path / "run"
    assert _train_gmm(capsys, run_dir, "--steps", "4")[0] == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert_usage_error(capsys, ["train", "--run-dir", str(run_dir), "--resume", "--no-progress", *extra],
                       needle=needle)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # nothing written


def test_resume_with_the_same_data_name_is_fine(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert _train_gmm(capsys, run_dir, "--steps", "2")[0] == 0
    assert _train_gmm(capsys, run_dir, "--steps", "3", "--resume")[0] == 0


def test_bare_cfgdiff_prints_usage(capsys):
    code, out, err = run_cli(capsys, [])
    assert code == 2
    assert "usage: cfgdiff" in err and "train" in err and "sample" in err


def test_sample_prints_network_evaluations_per_w(capsys, digits_run, tmp_path):
    code, out, _ = run_cli(capsys, ["sample", str(digits_run), "--w", "0,1", "--n-per-class", "1", "--steps", "3",
                                   "--sampler", "ddim", "--out", str(tmp_path / "g.png"), "--no-progress"])
    assert code == 0
    assert "w = 0: 3" in out and "w = 1: 6" in out
    assert list(np.load(tmp_path / "g.npz")["nfe_per_sample"]) == [3.0, 6.0]


def test_help_texts_cover_every_option(capsys):
    from cfgdiff.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"cfgdiff {name} {action.option_strings[0]} has no help text"
    train_help = " ".join(sub.choices["train"].format_help().split())
    assert "4000 for digits" in train_help and "128 for digits" in train_help
