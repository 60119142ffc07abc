"""``cfgdiff train --objective gft`` through the CLI: guided at w in one row per step, refusals, resume."""

import json

import numpy as np
import pytest
import torch

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.runtime.checkpoint import read_metadata
from cfgdiff.training import CHECKPOINT_FILE
from tests.helpers import assert_usage_error, run_cli


@pytest.fixture(scope="module")
def gft_run(tmp_path_factory):
    from cfgdiff.cli import main

    run_dir = tmp_path_factory.mktemp("gft") / "run"
    assert main(["train", "--data", "gmm2d", "--objective", "gft", "--steps", "600", "--run-dir", str(run_dir),
                 "--no-progress"]) == 0
    return run_dir


def test_gft_run_samples_guided_at_one_row_per_step(capsys, gft_run, tmp_path):
    meta = read_metadata(gft_run / CHECKPOINT_FILE)
    assert meta["objective"] == "gft" and meta["guidance_free"]["w_range"] == [0.0, 4.0]
    out = tmp_path / "grid.png"
    code, stdout, _ = run_cli(capsys, ["sample", gft_run, "--w", "0,3", "--steps", "32", "--n-per-class", "200",
                                       "--out", out, "--no-progress"])
    assert code == 0, stdout
    data = np.load(out.with_suffix(".npz"))
    assert list(data["nfe_per_sample"]) == [32, 32]  # one network row per step at every w (CFG: 64 at w = 3)
    # the guided target p(x|c) p(c|x)^w puts its mass where the classifier is confident: the exact posterior
    # p(c | x) of the samples' own class must rise from w = 0 to w = 3
    gm = GaussianMixture.three_gaussians()
    labels = torch.as_tensor(data["labels"])
    posterior = []
    for x in data["samples"]:
        log_post = gm.class_log_prob(torch.as_tensor(x).double(), torch.full((len(labels),), 20.0))
        posterior.append(float(log_post.gather(1, labels[:, None]).exp().mean()))
    assert posterior[1] > posterior[0], posterior


def test_gft_refusals_are_one_line(capsys, gft_run, tmp_path):
    for argv, needle in [
        (["train", "--data", "gmm2d", "--objective", "mg"], "--objective"),
        (["train", "--data", "gmm2d", "--gft-w-max", "2"], "--gft-w-max goes with --objective gft"),
        (["train", "--data", "gmm2d", "--objective", "gft", "--gft-w-max", "0"], "--gft-w-max"),
        (["train", "--data", "gmm2d", "--objective", "gft", "--p-uncond", "0"], "0 < p_uncond < 1"),
    ]:
        assert_usage_error(capsys, [*argv, "--run-dir", tmp_path / "bad", "--steps", "2"], needle)
        assert not (tmp_path / "bad").exists()
    assert_usage_error(capsys, ["sample", gft_run, "--w", "5"], "training range [0, 4]")
    assert_usage_error(capsys, ["sample", gft_run, "--guidance", "apg"], "already guided")
    assert_usage_error(capsys, ["train", "--run-dir", gft_run, "--resume", "--steps", "700", "--objective", "cfg"],
                       "--objective cannot change")


def test_gft_resume_through_the_cli(capsys, gft_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(gft_run, run_dir)
    code, _, err = run_cli(capsys, ["train", "--run-dir", run_dir, "--resume", "--steps", "620", "--no-progress"])
    assert code == 0, err
    meta = read_metadata(run_dir / CHECKPOINT_FILE)
    assert meta["step"] == 620 and meta["objective"] == "gft"
    events = [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 600, "changed": {"steps": [600, 620]}} in events
