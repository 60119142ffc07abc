"""Distributed training with 2 CPU processes (gloo on localhost): the same global batch as one process, one
set of files, per-rank randomness, resume under another process count, and the torchrun command itself."""

import json
import os
import shutil
import subprocess
import sys

import torch

from cfgdiff.data import load_dataset
from cfgdiff.runtime.checkpoint import load_checkpoint
from cfgdiff.training import (
    CHECKPOINT_FILE,
    DIFFUSION_LAYOUT,
    LOSS_FILE,
    default_config,
    diffusion_trainer,
    fit,
    init_distributed,
    train,
)
from cfgdiff.training.rundir import LOCK_FILE
from tests.training_support import TINY_MLP, fixed_noise_loss, free_port, run_spawned_group

RUN_FILES = {CHECKPOINT_FILE, "config.json", "data.json", LOSS_FILE, LOCK_FILE}  # the lock: rank 0's, free now


def _job(run_dir, *, steps, fixed_noise, resume=False, **config):
    """One process's part of a run (rank and world size from the torchrun-style environment)."""
    config = default_config("gmm2d", steps=steps, model=TINY_MLP, log_every=1, warmup_steps=0, **config)
    if not fixed_noise:
        return train(config, run_dir, resume=resume, handle_signals=False)
    ctx = init_distributed("cpu")
    try:
        trainer = diffusion_trainer(config, load_dataset("gmm2d"), dist=ctx)
        trainer.loss_fn = fixed_noise_loss
        return fit(trainer, run_dir, resume=resume, handle_signals=False)
    finally:
        ctx.shutdown()


def _child(rank, world, port, run_dir, job):
    """A rank of the group, in a fresh (spawned) interpreter, with torchrun's environment variables."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _job(run_dir, **job)


def _run(world, run_dir, **job):
    """Run ``_job`` in ``world`` spawned processes joined by gloo (or in this process when world == 1).

    The rendezvous port is picked free just before; if another process takes it meanwhile, a rank fails or
    waits for ever, so the group is given a deadline, killed and started once more on a new port."""
    if world == 1:
        return _job(run_dir, **job)
    backup = run_dir.with_name(run_dir.name + ".before")
    if job.get("resume"):  # a second try must resume from the same state as the first
        shutil.copytree(run_dir, backup)
    for _attempt in range(2):
        if run_spawned_group(_child, world, (world, free_port(), run_dir, job)):
            return None
        shutil.rmtree(run_dir, ignore_errors=True)
        if job.get("resume"):
            shutil.copytree(backup, run_dir)
    raise AssertionError(f"the {world}-process group failed twice")


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / LOSS_FILE).read_text().splitlines()
            if "loss" in json.loads(line)]


def test_two_processes_compute_the_one_process_global_batch(tmp_path):
    """With noise a fixed function of each example, 2 processes × 16 and 1 process × 32 compute the same
    per-example losses over the same global batch (rank r takes positions r·16 + [0, 16) of it), so the logged
    losses and the weights differ only by float32 reassociation: DDP averages two half-batch gradient means
    where one process takes one mean. Bound: a mean of n = 32 terms reassociated differs by at most
    ~n·u·mean|g| (u = 2⁻²⁴ ≈ 6e-8), i.e. ≲ 2e-6 relative; AdamW's update m/(√v + ε) is scale-free, so each
    step moves the weights by ≤ lr·(that relative error) + the same through clipping: after 8 steps at
    lr = 1e-3 the weights agree to ~1e-8·8 absolute and the losses to ~1e-5 relative. We assert rtol 1e-4 on
    losses and atol 1e-6 on weights (≥ 10× margin), while one step changes weights by ~lr = 1e-3, and a wrong
    shard, a missing all-reduce or a double-counted batch moves the loss by far more than 1e-4 (checked below
    against a run that sees another batch)."""
    job = dict(steps=8, fixed_noise=True, batch_size=32)
    _run(1, tmp_path / "one", **job)
    _run(2, tmp_path / "two", **job)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=0)
    w_one = load_checkpoint(tmp_path / "one" / CHECKPOINT_FILE)[0]["model"]
    w_two = load_checkpoint(tmp_path / "two" / CHECKPOINT_FILE)[0]["model"]
    for name in w_one:
        torch.testing.assert_close(w_two[name], w_one[name], rtol=0, atol=1e-6, msg=name)
    _run(1, tmp_path / "other", steps=8, fixed_noise=True, batch_size=32, seed=1)  # another data order
    assert (torch.tensor(_losses(tmp_path / "other")) - torch.tensor(one)).abs().max() > 1e-2


def test_loss_curve_of_two_processes_matches_one_within_the_noise(tmp_path):
    """The real Algorithm 1 loss, global batch B = 64, S = 30 steps: both runs see the same data each step but
    draw label dropout, λ and ε independently (one generator per rank), so the logged step losses L1_s, L2_s
    are two independent means of B per-example losses of variance v around the same expectation (both start
    from the same weights and follow the same expected dynamics): D_s = L1_s - L2_s has mean 0 and variance
    2v/B. Their average over S steps has standard deviation sd(D)/√S, which we estimate from the observed D_s
    themselves (an over-estimate if the trajectories drift apart, so the test errs on the safe side); by the
    central limit theorem over S independent steps |mean D| < 5·sd(D)/√S fails by chance with probability
    < 1e-6. This is the weak, statistical check the issue asks for (here the tolerance is ~15% of the mean
    loss, asserted below 20%); the strong one is the fixed-noise test above, which pins the 2-process step to
    the 1-process step at float32 rounding."""
    job = dict(steps=30, fixed_noise=False, batch_size=64)
    _run(1, tmp_path / "one", **job)
    _run(2, tmp_path / "two", **job)
    diff = torch.tensor(_losses(tmp_path / "one")) - torch.tensor(_losses(tmp_path / "two"))
    assert diff.numel() == 30 and diff.abs().max() > 0  # different draws: not the same numbers
    tolerance = 5 * diff.std() / diff.numel() ** 0.5
    assert diff.mean().abs() < tolerance, (float(diff.mean()), float(tolerance))
    assert tolerance < 0.2 * torch.tensor(_losses(tmp_path / "one")).mean()


def test_one_set_of_files_per_rank_randomness_and_resume_under_another_process_count(tmp_path):
    run = tmp_path / "run"
    _run(2, run, steps=4, fixed_noise=False, batch_size=16, checkpoint_every=2, keep=2)
    assert {p.name for p in run.iterdir()} == RUN_FILES | {DIFFUSION_LAYOUT.step_file(2),
                                                           DIFFUSION_LAYOUT.step_file(4)}
    log = [json.loads(line) for line in (run / LOSS_FILE).read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]  # rank 0 alone logs
    groups, meta = load_checkpoint(run / CHECKPOINT_FILE)
    assert meta["world_size"] == 2 and meta["data_consumed"] == 64
    assert not torch.equal(groups["rng"]["generator"], groups["rng"]["generator_rank1"])  # ranks draw apart
    shutil.copytree(run, tmp_path / "copy")
    # 2 -> 1 process: handled (weights, EMA, optimizer, data position carry over; generators re-seeded)
    one = _run(1, run, steps=6, fixed_noise=False, batch_size=16, resume=True)
    assert one.step == 6 and one.stream.consumed == 96
    resume = [json.loads(line) for line in (run / LOSS_FILE).read_text().splitlines() if "event" in line]
    assert resume == [{"event": "resume", "step": 4, "changed": {"steps": [4, 6], "world_size": [2, 1]}}]
    # 2 -> 2 processes: the generators of both ranks are restored
    _run(2, tmp_path / "copy", steps=6, fixed_noise=False, batch_size=16, resume=True)
    meta = load_checkpoint(tmp_path / "copy" / CHECKPOINT_FILE)[1]
    assert meta["step"] == 6 and meta["world_size"] == 2


def test_torchrun_command(tmp_path):
    """The documented command: torchrun --nproc_per_node 2 -m cfgdiff train ... (gloo on CPU)."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cfgdiff", "train", "--data", "gmm2d", "--run-dir", str(run), "--steps", "3", "--batch-size", "8",
         "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, "torchrun failed: " + result.stderr[-3000:]
    assert result.stdout.count("done: step 3") == 1 and result.stderr.count("training mlp") == 1
    assert "2 process(es) x 1 micro-batch(es) of 4" in result.stderr
    assert {p.name for p in run.iterdir()} == RUN_FILES | {"resolved_config.toml"} | {
        DIFFUSION_LAYOUT.step_file(s) for s in (0, 3)}
