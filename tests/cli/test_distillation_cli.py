"""``cfgdiff distill`` and distilled runs in ``sample`` and ``eval``: the run records its teacher, the student
costs one network row per step at any w, a progressive stage samples with its own steps, and every bad input is
one line, exit 2, nothing written."""

import json

import numpy as np
import pytest

from cfgdiff.cli import main
from cfgdiff.distillation import file_sha256, load_student
from cfgdiff.runtime.checkpoint import read_metadata
from cfgdiff.training import CHECKPOINT_FILE, CONFIG_FILE
from tests.helpers import assert_usage_error, run_cli

TINY = ["--steps", "2", "--batch-size", "16", "--log-every", "1", "--no-progress"]


@pytest.fixture(scope="module")
def stages(digits_run, tmp_path_factory):
    """Stage 1 on the tiny digits run, then one progressive halving 8 -> 4 (a few steps each: plumbing only)."""
    root = tmp_path_factory.mktemp("distilled")
    stage1, stage2 = root / "stage1", root / "stage2"
    assert main(["distill", str(digits_run), "--w-range", "0,4", "--run-dir", str(stage1), *TINY]) == 0
    assert main(["distill", str(stage1), "--progressive", "--steps-from", "8", "--run-dir", str(stage2), *TINY]) == 0
    return digits_run, stage1, stage2


def test_stage1_run_records_its_teacher_and_w_range(stages):
    teacher, stage1, _ = stages
    meta = read_metadata(stage1 / CHECKPOINT_FILE)
    info = meta["distillation"]
    assert info["stage"] == "guidance" and info["w_range"] == [0.0, 4.0]
    assert info["teacher"]["run_dir"] == str(teacher.resolve())
    assert info["teacher"]["step"] == read_metadata(teacher / CHECKPOINT_FILE)["step"]
    assert info["teacher"]["sha256"] == file_sha256(teacher / CHECKPOINT_FILE)
    assert meta["model_config"]["w_embedding"] is True and meta["step"] == 2
    config = json.loads((stage1 / CONFIG_FILE).read_text())
    assert config["teacher"] == str(teacher.resolve()) and config["w_min"] == 0.0 and config["w_max"] == 4.0


def test_stage2_run_records_its_teacher_and_steps(stages):
    _, stage1, stage2 = stages
    info = read_metadata(stage2 / CHECKPOINT_FILE)["distillation"]
    assert info["stage"] == "progressive" and info["teacher_steps"] == 8
    assert info["sampling"] == {"sampler": "ddim", "steps": 4, "grid": "cosine", "logsnr_min": -20.0,
                                "logsnr_max": 20.0}
    assert info["teacher"]["run_dir"] == str(stage1.resolve()) and info["teacher"]["stage"] == "guidance"
    assert info["origin"] == read_metadata(stage1 / CHECKPOINT_FILE)["distillation"]["teacher"]
    assert load_student(stage2).noise_end_logsnr == info["noise_end_logsnr"] == -10.0


def test_sample_a_student_costs_one_row_per_step_at_every_w(capsys, stages, tmp_path):
    _, stage1, _ = stages
    out = tmp_path / "grid.png"
    code, stdout, _ = run_cli(capsys, ["sample", stage1, "--w", "0,1,3", "--n-per-class", "1", "--steps", "3",
                                      "--sampler", "dpmpp_2m", "--out", out, "--no-progress"])
    assert code == 0 and out.is_file()
    saved = np.load(out.with_suffix(".npz"))
    assert saved["nfe_per_sample"].tolist() == [3.0, 3.0, 3.0]  # unguided price at every w
    assert saved["samples"].shape == (3, 10, 1, 8, 8) and "distilled" in stdout


def test_a_progressive_stage_samples_with_its_own_steps_and_warns_for_others(capsys, stages, tmp_path):
    _, _, stage2 = stages
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, ["sample", stage2, "--w", "2", "--n-per-class", "1", "--out", out, "--no-progress"])
    saved = np.load(out.with_suffix(".npz"))
    assert code == 0 and int(saved["steps"]) == 4 and str(saved["sampler"]) == "ddim" and "warning" not in err
    assert saved["nfe_per_sample"].tolist() == [4.0]
    code, _, err = run_cli(capsys, ["sample", stage2, "--w", "2", "--n-per-class", "1", "--steps", "6", "--out", out,
                                   "--no-progress"])
    assert code == 0 and int(np.load(out.with_suffix(".npz"))["steps"]) == 6
    assert "warning: this student was distilled for 4 ddim steps" in err


def test_eval_a_student_says_distilled(capsys, stages, tmp_path):
    _, stage1, _ = stages
    out = tmp_path / "eval"
    code, _, _ = run_cli(capsys, ["eval", stage1, "--w", "0,2", "--n", "20", "--steps", "2", "--sampler", "ddim",
                                 "--bootstrap", "0", "--out", out, "--no-progress"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert [r["guidance"] for r in result["rows"]] == ["distilled", "distilled"]
    assert [r["nfe_per_sample"] for r in result["rows"]] == [2.0, 2.0]
    assert [r["w"] for r in result["rows"]] == [0.0, 2.0]
    assert "Distilled student" in result["title"] and "distilled" in (out / "results.md").read_text()


def test_resume_continues_and_refuses_a_changed_range(capsys, stages, tmp_path):
    teacher, _, _ = stages
    run = tmp_path / "s1"
    assert run_cli(capsys, ["distill", teacher, "--w-range", "0,2", "--run-dir", run, *TINY])[0] == 0
    assert_usage_error(capsys, ["distill", teacher, "--w-range", "0,3", "--run-dir", run, "--resume", "--steps", "3",
                                "--no-progress"], "--w-range cannot change on --resume")
    code, _, _ = run_cli(capsys, ["distill", teacher, "--run-dir", run, "--resume", "--steps", "3", "--no-progress"])
    assert code == 0 and read_metadata(run / CHECKPOINT_FILE)["step"] == 3


@pytest.mark.parametrize("argv, needle", [
    (["--w-range", "4,0"], "reversed"),
    (["--w-range", "1,1"], "empty"),
    (["--w-range", "0"], "two numbers"),
    ([], "needs a w range"),
    (["--w-range", "0,4", "--steps-from", "8"], "go with --progressive"),
    (["--progressive", "--steps-from", "8"], "needs a w-conditioned teacher"),
    (["--progressive", "--steps-from", "7"], "even number"),
])
def test_bad_distill_inputs_are_one_line_and_write_nothing(capsys, digits_run, tmp_path, argv, needle):
    run = tmp_path / "student"
    assert_usage_error(capsys, ["distill", digits_run, "--run-dir", run, *argv, *TINY], needle)
    assert not run.exists()


def test_bad_teachers_and_ranges_are_one_line_and_write_nothing(capsys, stages, tmp_path):
    _, stage1, stage2 = stages
    run = tmp_path / "student"
    assert_usage_error(capsys, ["distill", tmp_path / "missing", "--w-range", "0,4", "--run-dir", run, *TINY],
                       "no teacher checkpoint")
    assert_usage_error(capsys, ["distill", stage1, "--w-range", "0,4", "--run-dir", run, *TINY],
                       "already a distilled student")
    assert_usage_error(capsys, ["distill", stage1, "--progressive", "--run-dir", run, *TINY],
                       "--steps-from N is required")
    assert_usage_error(capsys, ["distill", stage1, "--progressive", "--steps-from", "8", "--w-range", "0,5",
                                "--run-dir", run, *TINY], "does not lie inside the teacher's")
    assert_usage_error(capsys, ["distill", stage2, "--progressive", "--steps-from", "8", "--run-dir", run, *TINY],
                       "--steps-from must be 4")
    assert not run.exists()
    out = tmp_path / "grid.png"
    assert_usage_error(capsys, ["sample", stage1, "--w", "0,5", "--out", out, "--no-progress"],
                       "outside this student's training range [0, 4]")
    assert_usage_error(capsys, ["sample", stage1, "--w", "1", "--interval", "0.1,1", "--out", out, "--no-progress"],
                       "--interval does not apply")
    assert not out.exists() and not out.with_suffix(".npz").exists()
    assert_usage_error(capsys, ["eval", stage1, "--w", "-1", "--n", "20", "--out", tmp_path / "ev", "--no-progress"],
                       "outside this student's training range")
    assert not (tmp_path / "ev").exists()


def test_distill_refuses_its_teachers_directory_other_runs_and_a_changed_teacher(digits_run, tmp_path):
    """The library's own refusals (``distill``), each before anything is written."""
    import shutil

    from cfgdiff.distillation import WRange
    from cfgdiff.distillation.run import distill, distill_config
    from cfgdiff.runtime.checkpoint import load_checkpoint, save_checkpoint
    from cfgdiff.training import RunDirError

    teacher = tmp_path / "teacher"
    shutil.copytree(digits_run, teacher)
    files = {p.name: p.read_bytes() for p in teacher.iterdir() if p.is_file()}
    config = distill_config(teacher, w_range=WRange(0.0, 4.0), steps=2, batch_size=16, log_every=1)
    with pytest.raises(RunDirError, match="must differ from the teacher"):
        distill(config, teacher, overwrite=True, handle_signals=False)
    with pytest.raises(RunDirError, match="not a distillation"):
        distill(config, teacher, resume=True, resume_changes={"steps": 3}, handle_signals=False)
    assert {p.name: p.read_bytes() for p in teacher.iterdir() if p.is_file()} == files
    run = tmp_path / "student"
    assert distill(config, run, handle_signals=False).step == 2
    groups, meta = load_checkpoint(teacher / CHECKPOINT_FILE)  # the teacher changes: another SHA-256
    save_checkpoint(teacher / CHECKPOINT_FILE, model=groups["model"], ema=groups["ema"] or None,
                    metadata={**meta, "note": "changed"})
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(RunDirError, match="changed since this distillation began"):
        distill(config, run, resume=True, resume_changes={"steps": 3}, handle_signals=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
