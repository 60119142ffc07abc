"""The command line: the main paths write what they promise; every bad input is one line and exit 2."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cfgdiff.cli import main
from cfgdiff.training import CHECKPOINT_FILE, Trainer


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_usage_error(capsys, argv, *, needle=None):
    code, _, err = _run(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("cfgdiff: error:"), err
    assert "Traceback" not in err
    if needle:
        assert needle in lines[0], lines[0]


def test_sample_writes_grid_and_npz(capsys, digits_run, tmp_path):
    out = tmp_path / "grid.png"
    code, stdout, _ = _run(capsys, [
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
    code, _, _ = _run(capsys, ["sample", str(digits_run), "--guidance-scale", "1,2.5", "--classes", "3",
                               "--n-per-class", "1", "--steps", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    assert list(np.load(out.with_suffix(".npz"))["w"]) == [0.0, 1.5]


def test_sample_vector_data_draws_scatter(capsys, gmm_run, tmp_path):
    run_dir, _ = gmm_run
    out = tmp_path / "gmm.png"
    code, _, _ = _run(capsys, ["sample", str(run_dir), "--w", "0,2", "--n-per-class", "50", "--steps", "16",
                               "--out", str(out), "--no-progress"])
    assert code == 0 and out.exists()
    assert np.load(out.with_suffix(".npz"))["samples"].shape == (2, 150, 2)


def test_toy_figure(capsys, tmp_path):
    out = tmp_path / "toy.png"
    code, _, _ = _run(capsys, ["toy", "--w", "0,3", "--n-per-class", "50", "--steps", "16", "--out", str(out)])
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
    _assert_usage_error(capsys, argv, needle=needle)
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
    _assert_usage_error(capsys, ["sample", str(digits_run), "--out", str(out), "--no-progress", *extra],
                        needle=needle)
    assert not out.exists() and not out.with_suffix(".npz").exists()


def test_bad_checkpoints(capsys, tmp_path, digits_run):
    _assert_usage_error(capsys, ["sample", str(tmp_path / "nowhere")], needle="no checkpoint")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (digits_run / CHECKPOINT_FILE).read_bytes()
    (truncated / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    _assert_usage_error(capsys, ["sample", str(truncated)], needle="truncated")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / CHECKPOINT_FILE).write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.")
    _assert_usage_error(capsys, ["sample", str(pickled)], needle="safetensors")
    assert not (truncated / "samples").exists() and not (pickled / "samples").exists()


def test_train_refuses_existing_run_and_resumes(capsys, tmp_path):
    run_dir = tmp_path / "run"
    base = ["train", "--data", "gmm2d", "--run-dir", str(run_dir), "--batch-size", "16", "--no-progress"]
    assert _run(capsys, [*base, "--steps", "4"])[0] == 0
    before = (run_dir / CHECKPOINT_FILE).read_bytes()
    _assert_usage_error(capsys, [*base, "--steps", "4"], needle="already holds a run")
    assert (run_dir / CHECKPOINT_FILE).read_bytes() == before
    _assert_usage_error(capsys, ["train", "--data", "gmm2d", "--run-dir", str(tmp_path / "none"), "--resume"],
                        needle="nothing to resume")
    code, out, _ = _run(capsys, [*base, "--steps", "6", "--resume"])
    assert code == 0 and "step 6" in out
    assert _run(capsys, [*base, "--steps", "2", "--overwrite"])[0] == 0


def test_train_nonfinite_loss_exits_1_and_keeps_checkpoint(capsys, tmp_path, monkeypatch):
    original = Trainer.loss_on_batch
    monkeypatch.setattr(Trainer, "loss_on_batch",
                        lambda self, x, c: original(self, x, c) * (math.nan if self.step >= 5 else 1.0))
    run_dir = tmp_path / "run"
    code, _, err = _run(capsys, ["train", "--data", "gmm2d", "--run-dir", str(run_dir), "--steps", "20",
                                 "--batch-size", "8", "--checkpoint-every", "4", "--no-progress"])
    assert code == 1 and "loss is nan" in err and "Traceback" not in err
    from cfgdiff.checkpoint import read_metadata
    assert read_metadata(run_dir / CHECKPOINT_FILE)["step"] == 4


def test_python_dash_m_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cfgdiff", "sample", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no checkpoint" in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "cfgdiff", "sample", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    assert "s = w + 1" in help_text and "(1+w)" in help_text
