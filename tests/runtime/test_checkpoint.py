"""Checkpoint files: atomic writes, formats 1 (cfgdiff 0.1) and 2, the run layout with --keep."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from cfgdiff import load_model
from cfgdiff.runtime.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    optimizer_tensors,
    read_metadata,
    save_checkpoint,
)
from cfgdiff.training import CHECKPOINT_FILE, LOSS_FILE, default_config, train
from cfgdiff.training.rundir import DIFFUSION_LAYOUT, LOCK_FILE, drop_future, write_checkpoint
from tests.training_support import TINY_MLP

V1_RUN = Path(__file__).parents[1] / "fixtures" / "v1" / "gmm2d_run"  # written by cfgdiff 0.1's trainer (3 steps)


def test_atomic_write_leaves_no_temp_file_and_usual_permissions(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"abc")
    atomic_write_bytes(path, b"defg")
    assert path.read_bytes() == b"defg"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_newer_format_is_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.w": torch.zeros(1)}, str(tmp_path / "c.safetensors"),
              metadata={"cfgdiff": json.dumps({"format_version": 99, "step": 1})})
    with pytest.raises(CheckpointError, match="format 99"):
        read_metadata(tmp_path / "c.safetensors")


def test_format_1_run_loads_and_resumes(tmp_path):
    """A run directory written by cfgdiff 0.1 (format 1: data_order + data_cursor, no world_size) loads with
    load_model exactly as stored and continues with --resume under the new trainer."""
    groups, meta = load_checkpoint(V1_RUN / CHECKPOINT_FILE)
    assert meta["format_version"] == 1 and "data_consumed" not in meta and "rng.data_order" not in groups["rng"]
    model = load_model(V1_RUN)
    assert model.num_classes == 3 and model.train_step == 3 and model.class_names == ("a", "b", "c")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in groups["ema"].items())
    run = tmp_path / "run"
    shutil.copytree(V1_RUN, run)
    trainer = train(default_config("gmm2d", steps=6), run, resume=True)
    assert trainer.step == 6 and trainer.stream.consumed == 6 * 16  # continues at step · batch_size
    assert read_metadata(run / CHECKPOINT_FILE)["format_version"] == 2
    # the old generator state was restored (not re-seeded): the resumed run matches a second resume
    again = tmp_path / "again"
    shutil.copytree(V1_RUN, again)
    other = train(default_config("gmm2d", steps=6), again, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(),
                                                  other.model.state_dict().values(), strict=True))
    events = [json.loads(line) for line in (run / LOSS_FILE).read_text().splitlines()]
    assert events[3] == {"event": "resume", "step": 3, "changed": {"steps": [3, 6]}}


def test_format_1_classifier_checkpoint_loads_and_resumes(tmp_path):
    """A noisy classifier written the way cfgdiff 0.1 wrote it (kind, rng.generator, old train_config keys)."""
    from cfgdiff.training.classifier import ClassifierConfig, NoisyClassifier, load_classifier, train_classifier

    torch.manual_seed(0)
    net = NoisyClassifier((1, 8, 8), 10, base_channels=8)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(2, 1, 8, 8), torch.zeros(2))[:, 0].sum().backward()
    opt.step()
    old_config = {"base_channels": 8, "batch_size": 8, "checkpoint_every": 2, "data": "digits", "device": "cpu",
                  "ema_decay": 0.999, "logsnr_max": 20.0, "logsnr_min": -20.0, "logsnr_schedule": "cosine",
                  "lr": 0.002, "seed": 0, "steps": 2, "warmup_steps": 100}
    ema = {k: v.clone() for k, v in net.state_dict().items()}
    save_checkpoint(tmp_path / "classifier.safetensors", model=net.state_dict(), ema=ema,
                    optim=optimizer_tensors(opt), rng={"generator": torch.Generator().manual_seed(0).get_state()},
                    metadata={"kind": "noisy_classifier", "step": 2, "model_config": net.config(), "data": "digits",
                              "noisy_test_accuracy": {"0.0": 0.1}, "train_config": old_config,
                              "format_version": 1})
    assert read_metadata(tmp_path / "classifier.safetensors")["format_version"] == 1
    loaded = load_classifier(tmp_path)
    z, lam = torch.randn(3, 1, 8, 8), torch.zeros(3)
    torch.testing.assert_close(loaded(z, lam), net.eval()(z, lam), rtol=0, atol=0)
    _, meta = train_classifier(ClassifierConfig(steps=4), tmp_path, resume=True)
    assert meta["step"] == 4 and meta["train_config"]["batch_size"] == 8 and meta["train_config"]["hflip"] is False


def test_keep_k_step_files_and_a_latest_that_names_the_newest(tmp_path):
    config = default_config("gmm2d", steps=10, batch_size=8, checkpoint_every=2, keep=2, model=TINY_MLP)
    train(config, tmp_path)
    steps = [s for s, _ in DIFFUSION_LAYOUT.step_files(tmp_path)]
    assert steps == [8, 10]
    latest, newest = tmp_path / CHECKPOINT_FILE, tmp_path / DIFFUSION_LAYOUT.step_file(10)
    assert latest.read_bytes() == newest.read_bytes() and read_metadata(latest)["step"] == 10
    assert latest.stat().st_ino == newest.stat().st_ino  # one write: the latest is a hard link
    assert load_model(newest).train_step == 10
    assert [p.name for p in tmp_path.glob(".*")] == [LOCK_FILE]  # no temporary files left; the (free) lock stays


def test_keep_zero_writes_only_the_latest(tmp_path):
    train(default_config("gmm2d", steps=4, batch_size=8, checkpoint_every=2, keep=0, model=TINY_MLP), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_FILE, "config.json", "data.json",
                                                                 LOSS_FILE, LOCK_FILE])


def test_resume_removes_what_an_interrupted_run_left_past_the_checkpoint(tmp_path):
    for step in (2, 4, 6):
        write_checkpoint(tmp_path, DIFFUSION_LAYOUT, step, b"x" * step, keep=5)
    (tmp_path / ".checkpoint-step-00000008.safetensors.123.tmp").write_bytes(b"torn")
    (tmp_path / LOSS_FILE).write_text('{"step": 2, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
    drop_future(tmp_path, DIFFUSION_LAYOUT, 4)
    assert [s for s, _ in DIFFUSION_LAYOUT.step_files(tmp_path)] == [2, 4]
    assert not list(tmp_path.glob(".*"))
    assert (tmp_path / LOSS_FILE).read_text() == '{"step": 2, "loss": 1.0}\n'
