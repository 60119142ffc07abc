"""SIGKILL at chosen moments never costs the run: the latest checkpoint loads, and resuming from it ends
bit-identical to a run that was never killed.

Each kill point is a named ``pause_point`` (CFGDIFF_PAUSE_AT="point:n" makes the n-th arrival write a marker
file and sleep), so the test kills a real ``cfgdiff train`` process exactly there. With checkpoints at steps
0, 4, 8, 12 (``--checkpoint-every 4 --keep 1``):

* ``step:5``: between checkpoints (latest: step 4);
* ``save-write:2``: during the step-4 write, the temporary file half-written (latest: step 0);
* ``save-rename:2``: step-4 file complete and fsynced, not yet renamed (latest: step 0);
* ``save-latest:2``: step-4 file in place, the latest not yet pointed at it (latest: step 0);
* ``save-prune:3``: latest at step 8, step 4 not yet pruned (latest: step 8);
* ``config``: after the step-0 checkpoint, before config.json exists (latest: step 0; the config is read back
  from the checkpoint's own metadata);
* ``save-write:1``: during the very first (step-0) write: no run exists yet; the directory holds only a
  temporary file, so ``--resume`` says there is nothing to resume and a fresh ``train`` starts without
  ``--overwrite``.
"""

import os
import signal

import pytest

from cfgdiff import load_model
from cfgdiff.runtime.checkpoint import read_metadata
from cfgdiff.training import CHECKPOINT_FILE, DIFFUSION_LAYOUT, RunDirError, default_config, train
from tests.training_support import fork_cli, states_equal, wait_for

STEPS = 12
KILL_POINTS = {  # point -> step of the latest checkpoint left behind (None: no run yet)
    "step:5": 4, "save-write:2": 0, "save-rename:2": 0, "save-latest:2": 0, "save-prune:3": 8, "config": 0,
    "save-write:1": None,
}


def _config():
    return default_config("gmm2d", steps=STEPS, batch_size=16, checkpoint_every=4, keep=1, device="cpu")


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Start one `cfgdiff train` process per kill point at once; SIGKILL each at its point."""
    root = tmp_path_factory.mktemp("killed")
    procs = {}
    for i, point in enumerate(KILL_POINTS):
        run_dir, marker = root / f"run{i}", root / f"marker{i}"
        env = {"CFGDIFF_PAUSE_AT": point, "CFGDIFF_PAUSE_FILE": str(marker)}
        argv = ["train", "--data", "gmm2d", "--run-dir", str(run_dir), "--steps", str(STEPS), "--batch-size", "16",
                "--checkpoint-every", "4", "--keep", "1", "--no-progress"]
        procs[point] = (fork_cli(argv, env, str(root / f"out{i}")), run_dir, marker)
    for point, (pid, _, marker) in procs.items():
        wait_for(marker, pid)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, point
    return {point: run_dir for point, (_, run_dir, _) in procs.items()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return train(_config(), tmp_path_factory.mktemp("straight"))


@pytest.mark.parametrize("point", [p for p, step in KILL_POINTS.items() if step is not None])
def test_kill_leaves_a_latest_checkpoint_that_loads_and_resumes_bit_exact(killed, straight, point):
    run_dir = killed[point]
    assert read_metadata(run_dir / CHECKPOINT_FILE)["step"] == KILL_POINTS[point]
    assert load_model(run_dir).train_step == KILL_POINTS[point]
    resumed = train(_config(), run_dir, resume=True)
    assert resumed.step == STEPS
    assert states_equal(resumed.model.state_dict(), straight.model.state_dict())
    assert states_equal(resumed.ema.state_dict(), straight.ema.state_dict())
    assert [s for s, _ in DIFFUSION_LAYOUT.step_files(run_dir)] == [STEPS]  # keep 1, stale files gone
    assert not list(run_dir.glob(".*.tmp"))


def test_kill_during_the_first_write_leaves_no_run_and_a_fresh_start_works(killed, straight):
    run_dir = killed["save-write:1"]
    assert not (run_dir / CHECKPOINT_FILE).exists() and list(run_dir.glob(".*.tmp"))
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(_config(), run_dir, resume=True)
    fresh = train(_config(), run_dir)  # no --overwrite needed: the directory holds no run
    assert states_equal(fresh.model.state_dict(), straight.model.state_dict())
