"""Issue 21 through the CLI: short runs get a warm-up and a schedule that fit, ``--time-budget``, the run-directory
lock, negative weights as values, sizes and output folders checked before any work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cfgdiff.models.presets import preset_for
from cfgdiff.runtime.checkpoint import read_metadata
from cfgdiff.training import CHECKPOINT_FILE, LoopConfig
from cfgdiff.training.config import WARMUP_FRACTION
from cfgdiff.training.rundir import lock_holder
from cfgdiff.training.trainer import lr_at
from tests.data.test_data_formats import make_set
from tests.helpers import assert_usage_error, run_cli

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "cache"))


def _npz(tmp_path, *, size=28, per_class=(6, 6, 6)):
    x, y, _, _ = make_set(1, size=size, per_class=per_class)
    path = tmp_path / f"set{size}.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture()
def no_steps(monkeypatch):
    """Training that stops before its first step: the run is set up (config, step-0 checkpoint) and nothing more,
    so a test reads what the CLI resolved without training a 28x28 network for 400 steps."""
    monkeypatch.setattr("cfgdiff.training.loop._loop", lambda *args, **kwargs: None)


def test_a_400_step_28x28_run_gets_a_warmup_that_fits_and_a_schedule_that_ends_with_it(capsys, tmp_path, no_steps):
    data, run_dir = _npz(tmp_path), tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--data", data, "--steps", 400, "--batch-size", 64, "--run-dir", run_dir,
                                    "--test-fraction", "0.25", "--no-progress"])
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    preset_warmup = preset_for((1, 28, 28))["warmup_steps"]
    assert preset_warmup > 400  # the preset's own warm-up would outlast the run
    assert config["warmup_steps"] == int(WARMUP_FRACTION * 400) and config["lr_schedule"] == "cosine"
    loop = LoopConfig.from_json(config)
    lrs = [lr_at(t, loop) for t in range(400)]
    assert lrs[loop.warmup_steps - 1] == pytest.approx(loop.lr)  # the peak is reached within the run
    assert lrs[-1] == pytest.approx(loop.lr_floor * loop.lr)  # and the decay ends at the last step
    assert all(a >= b for a, b in zip(lrs[loop.warmup_steps - 1:], lrs[loop.warmup_steps:], strict=False))
    assert "warning: the training data is very small" in err and "fewer than the batch of 64" in err


def test_an_explicit_long_warmup_is_kept_with_one_warning(capsys, tmp_path, no_steps):
    data, run_dir = _npz(tmp_path), tmp_path / "run"
    code, _, err = run_cli(capsys, ["train", "--data", data, "--steps", 400, "--warmup-steps", 100, "--batch-size", 4,
                                    "--run-dir", run_dir, "--test-fraction", "0.25", "--no-progress"])
    assert code == 0, err
    assert json.loads((run_dir / "config.json").read_text())["warmup_steps"] == 100
    warnings = [line for line in err.splitlines() if "--warmup-steps" in line]
    assert len(warnings) == 1 and "more than 10% of --steps 400" in warnings[0]


def test_a_three_image_folder_is_warned_about(capsys, tmp_path, no_steps):
    x, y, _, _ = make_set(1, size=8, per_class=(1, 1, 1))
    x_test, y_test = x.copy(), y.copy()
    data = tmp_path / "three.npz"
    np.savez(data, x=x, y=y, x_test=x_test, y_test=y_test)
    code, _, err = run_cli(capsys, ["train", "--data", data, "--steps", 2, "--run-dir", tmp_path / "run",
                                    "--no-progress"])
    assert code == 0, err
    [line] = [line for line in err.splitlines() if "very small" in line]
    assert "3 examples, fewer than the batch of 128" in line and "fewer than 5" in line


def test_time_budget_stops_within_ten_percent_and_leaves_a_checkpoint_that_samples(capsys, tmp_path):
    run_dir, budget = tmp_path / "run", 8.0
    t0 = time.monotonic()
    code, out, err = run_cli(capsys, ["train", "--data", "gmm2d", "--time-budget", f"{budget:g}s", "--run-dir", run_dir,
                                      "--no-progress"])
    elapsed = time.monotonic() - t0
    assert code == 0, err
    assert 0.6 * budget <= elapsed <= 1.1 * budget, elapsed  # (1.5 s are kept for a process's exit)
    [chosen] = [line for line in err.splitlines() if line.startswith("time budget 8 s:")]
    meta = read_metadata(run_dir / CHECKPOINT_FILE)
    config = json.loads((run_dir / "config.json").read_text())
    assert meta["step"] == config["steps"] == meta["train_config"]["steps"] > 10  # a finished run
    assert f"done: step {meta['step']}" in out
    events = [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines() if '"event"' in line]
    assert [e["event"] for e in events] == ["time_budget", "time_budget_end"] and events[0]["budget_s"] == budget
    planned = events[0]["steps"]  # the warm-up follows the first plan (gmm2d's preset asks for 100) and stays
    assert config["warmup_steps"] == events[0]["warmup_steps"] == min(100, int(WARMUP_FRACTION * planned))
    assert f"so {planned} steps to step {planned}, warm-up {config['warmup_steps']}, cosine" in chosen
    code, out, err = run_cli(capsys, ["sample", run_dir, "--w", "0,1", "--steps", 4, "--n-per-class", 2,
                                      "--out", tmp_path / "s" / "grid.png", "--no-progress"])
    assert code == 0, err
    assert f"from step {meta['step']} of {meta['step']}" in out


def test_time_budget_takes_durations_and_refuses_bad_ones(capsys, tmp_path):
    from cfgdiff.cli.arguments import duration

    parse = duration("--time-budget")
    assert (parse("90s"), parse("10m"), parse("1.5h"), parse("45")) == (90.0, 600.0, 5400.0, 45.0)
    for bad in ("0s", "-5m", "ten minutes", "5y"):
        assert_usage_error(capsys, ["train", "--time-budget", bad, "--run-dir", tmp_path / "r"], "--time-budget")
    assert_usage_error(capsys, ["train", "--time-budget", "10s", "--steps", 5, "--run-dir", tmp_path / "r"],
                       "not both")
    assert not (tmp_path / "r").exists()


def _start_trainer(run_dir, steps):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cfgdiff", "train", "--data", "gmm2d", "--steps", str(steps),
                             "--batch-size", "256", "--run-dir", str(run_dir), "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while lock_holder(run_dir) != proc.pid:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the trainer never locked its run directory"
        time.sleep(0.05)
    return proc


def _settled_files(run_dir):
    """The run's files but the first trainer's own temporaries, which it renames into place while the test looks."""
    return {p.name for p in run_dir.iterdir() if not p.name.endswith(".tmp")}


def test_a_second_trainer_of_a_locked_directory_exits_2_while_the_first_finishes(capsys, tmp_path):
    run_dir = tmp_path / "run"
    first = _start_trainer(run_dir, steps=400)
    try:
        for argv in (["train", "--run-dir", run_dir, "--resume", "--steps", 500],
                     ["train", "--data", "gmm2d", "--run-dir", run_dir, "--overwrite", "--steps", 5],
                     ["train", "--data", "gmm2d", "--run-dir", run_dir, "--steps", 5]):
            before = _settled_files(run_dir)
            assert_usage_error(capsys, argv, f"is being trained by process {first.pid}")
            assert before <= _settled_files(run_dir)  # nothing of the first run removed
        code, out, err = run_cli(capsys, ["info", run_dir])  # readers keep working and say what they read
        assert code == 0 and f"being trained now by process {first.pid}" in out
        code, out, err = run_cli(capsys, ["sample", run_dir, "--w", "1", "--steps", 2, "--n-per-class", 1,
                                          "--out", tmp_path / "s" / "grid.png", "--no-progress"])
        assert code == 0 and f"being trained now by process {first.pid}; using its checkpoint at step" in err
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert read_metadata(run_dir / CHECKPOINT_FILE)["step"] == 400 and lock_holder(run_dir) is None


def test_a_sigkilled_trainer_leaves_no_lock(capsys, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_trainer(run_dir, steps=100_000)
    deadline = time.monotonic() + 60
    while not (run_dir / CHECKPOINT_FILE).exists():  # killed mid-run, not before its first checkpoint
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the trainer never wrote a checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert lock_holder(run_dir) is None  # the lock file may stay; it locks nothing
    step = read_metadata(run_dir / CHECKPOINT_FILE)["step"]
    code, _, err = run_cli(capsys, ["train", "--run-dir", run_dir, "--resume", "--steps", step + 2, "--no-progress"])
    assert code == 0, err
    assert read_metadata(run_dir / CHECKPOINT_FILE)["step"] == step + 2


def test_negative_weights_are_values(capsys, digits_run, tmp_path):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, ["sample", digits_run, "--w", "-1,0,1", "--steps", 2, "--n-per-class", 1,
                                    "--out", out, "--no-progress"])
    assert code == 0, err
    with np.load(out.with_suffix(".npz")) as f:
        assert list(f["w"]) == [-1.0, 0.0, 1.0] and f["samples"].shape[0] == 3  # three panels
    code, _, err = run_cli(capsys, ["sample", digits_run, "--guidance-scale", "-0.5", "--steps", 2, "--n-per-class",
                                    1, "--out", out, "--no-progress"])
    assert code == 0, err
    with np.load(out.with_suffix(".npz")) as f:
        assert list(f["w"]) == [-1.5]  # w = s - 1
    assert_usage_error(capsys, ["sample", digits_run, "--w", "-x"], "expected one argument")  # words stay options


@pytest.fixture()
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr("cfgdiff.sampling.pipeline.GuidedRun.iter_samples", refuse)


def test_an_impossible_sample_size_is_refused_before_anything_is_allocated_or_written(capsys, digits_run, tmp_path,
                                                                                     no_sampling):
    out = tmp_path / "out" / "grid.png"
    t0 = time.monotonic()
    assert_usage_error(capsys, ["sample", digits_run, "--n-per-class", 100_000_000, "--out", out],
                       "needs about")  # too many to hold: streamed, and too many for the disk too
    assert time.monotonic() - t0 < 10  # no 8 GB label tensor was built
    assert not out.parent.exists()


def test_samples_too_many_to_hold_stream_to_disk_and_equal_the_held_ones(capsys, digits_run, tmp_path, monkeypatch):
    import shutil

    from cfgdiff.cli.sample import read_samples

    argv = ["sample", digits_run, "--w", "0,1", "--steps", 2, "--n-per-class", 40, "--batch-size", 50, "--no-progress"]
    code, _, err = run_cli(capsys, [*argv, "--out", tmp_path / "held" / "grid.png"])
    assert code == 0, err
    held, _ = read_samples(tmp_path / "held" / "grid.npz")
    # 2 x 400 samples and their 48-pixel figure take about 16 MB: with 20 MB available they stream (above half)
    monkeypatch.setattr("cfgdiff.cli.arguments.available_memory", lambda: 20 * 2**20)
    out = tmp_path / "streamed" / "grid.png"
    code, stdout, err = run_cli(capsys, [*argv, "--out", out])
    assert code == 0, err
    assert "streamed to" in stdout and "the first 16 of each class" in stdout and out.exists()
    with np.load(out.with_suffix(".npz")) as f:
        assert "samples" not in f.files and str(f["samples_file"]) == "grid.samples.npy"
    streamed, fields = read_samples(out.with_suffix(".npz"))
    assert isinstance(streamed, np.memmap) and list(fields["w"]) == [0.0, 1.0]
    np.testing.assert_array_equal(streamed, held)  # the same samples, bit for bit
    full = shutil.disk_usage(tmp_path)  # and where the disk cannot take them: one line, nothing written
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full._replace(free=1000))
    assert_usage_error(capsys, [*argv, "--out", tmp_path / "nodisk" / "grid.png"], "of disk for grid.samples.npy")
    assert not (tmp_path / "nodisk").exists()


def _unwritable(tmp_path):
    """A folder this process cannot write in: /proc for root (permission bits do not stop it), else mode 0o555."""
    if os.geteuid() == 0:
        return Path("/proc/cfgdiff-test-nowhere")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_an_unwritable_out_is_refused_before_sampling(capsys, digits_run, tmp_path, no_sampling, command):
    folder = _unwritable(tmp_path)
    out = folder / "grid.png" if command == "sample" else folder / "eval"
    extra = ["--n", 8, "--w", "0"] if command == "eval" else []
    assert_usage_error(capsys, [command, digits_run, "--out", out, "--steps", 2, *extra], "cannot write in")
