"""Training (Algorithm 1): label dropout rate, loss goes down, guided samples, checkpoints and resume."""

import json
import math

import pytest
import torch

from cfgdiff import load_model
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.data import load_dataset
from cfgdiff.guidance import cfg
from cfgdiff.runtime.checkpoint import CheckpointError, load_checkpoint
from cfgdiff.sampling.solvers import sample_ancestral
from cfgdiff.training import (
    CHECKPOINT_FILE,
    LOSS_FILE,
    RunDirError,
    Trainer,
    TrainingDiverged,
    default_config,
    diffusion_trainer,
    drop_labels,
    train,
)

TINY_MLP = {"arch": "mlp", "hidden": 32, "depth": 1, "emb_dim": 32}


def _binomial_ok(count, n, p):
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p_uncond", [0.1, 0.5])
def test_observed_label_drop_rate_in_training_step(p_uncond):
    config = default_config("gmm2d", p_uncond=p_uncond, batch_size=1000, model=TINY_MLP)
    trainer = diffusion_trainer(config, load_dataset("gmm2d"))
    seen = []
    forward = trainer.model.forward
    trainer.model.forward = lambda z, logsnr, labels: (seen.append(labels.clone()), forward(z, logsnr, labels))[1]
    for _ in range(20):
        trainer.train_step()
    labels = torch.cat(seen)
    n_null = int((labels == 3).sum())
    assert _binomial_ok(n_null, labels.numel(), p_uncond), (n_null, labels.numel())
    # dropped rows are the null label; the rest are the data set's own labels
    assert int(labels.max()) == 3 and int(labels.min()) == 0


def test_drop_labels_extremes():
    labels = torch.arange(10) % 3
    g = torch.Generator().manual_seed(0)
    assert torch.equal(drop_labels(labels, 0.0, 3, g), labels)
    assert (drop_labels(labels, 1.0, 3, g) == 3).all()


def test_short_run_lowers_loss_and_guided_samples_land_near_means(gmm_run):
    run_dir, trainer = gmm_run
    log = [json.loads(line) for line in (run_dir / LOSS_FILE).read_text().splitlines()]
    assert log[-1]["loss"] < 0.75 * log[0]["loss"]
    model = load_model(run_dir)
    gm = GaussianMixture.three_gaussians()
    labels = torch.arange(3).repeat_interleave(300)
    x = sample_ancestral(cfg(model, 1.0), (labels.shape[0], 2), labels, steps=64, clip_x=model.x_bound,
                    generator=torch.Generator().manual_seed(0))
    for c in range(3):
        dist = torch.linalg.norm(x[labels == c].mean(0)[None] - gm.means.float(), dim=1)  # [K]
        assert int(dist.argmin()) == c and dist[c] < 0.25, dist  # guidance pushes outwards a little
    # and guidance sharpened them: the exact classifier is confident on the guided samples
    log_post = gm.class_log_prob(x.double(), torch.full((x.shape[0],), 20.0))
    assert log_post.gather(1, labels[:, None]).exp().mean() > 0.9


def test_checkpoint_round_trip_is_exact(gmm_run):
    run_dir, trainer = gmm_run
    model = load_model(run_dir)
    for name, value in trainer.ema.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    raw = load_model(run_dir, ema=False)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(raw.state_dict()[name], value)
    assert model.num_classes == 3 and tuple(model.data_shape) == (2,)
    z, logsnr, labels = torch.randn(5, 2), torch.linspace(-5, 5, 5), torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        torch.testing.assert_close(model(z, logsnr, labels), trainer.ema(z, logsnr, labels), rtol=0, atol=0)
    groups, meta = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert meta["step"] == trainer.step == 1500 and meta["format_version"] == 2


def test_resume_continues_and_matches_uninterrupted_run(tmp_path):
    # a flat learning rate does not depend on the total, so a larger total on resume continues the same run
    config = dict(steps=40, batch_size=64, checkpoint_every=10, log_every=10, model=TINY_MLP, lr_schedule="constant",
                  warmup_steps=4)
    straight = train(default_config("gmm2d", **config), tmp_path / "straight")
    train(default_config("gmm2d", **{**config, "steps": 25}), tmp_path / "resumed")
    resumed = train(default_config("gmm2d", **config), tmp_path / "resumed", resume=True)
    assert resumed.step == 40
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    lines = [json.loads(line) for line in (tmp_path / "resumed" / LOSS_FILE).read_text().splitlines()]
    assert [e["step"] for e in lines if "loss" in e] == [10, 20, 25, 30, 40]
    assert [e for e in lines if "event" in e] == [{"event": "resume", "step": 25, "changed": {"steps": [25, 40]}}]


def test_an_interrupted_cosine_run_resumes_bit_exactly(tmp_path):
    """The cosine schedule depends on (step, total) only: stopped at step 25 of 40 and resumed, the run ends
    with the weights of the uninterrupted one, bit for bit."""
    config = default_config("gmm2d", steps=40, batch_size=64, checkpoint_every=10, log_every=10, model=TINY_MLP)
    assert config.lr_schedule == "cosine"
    straight = train(config, tmp_path / "straight")
    started = []

    def stop_at_25(step, loss):  # a request after step 24 is agreed in step 25, which then checkpoints and stops
        started[0].stop_requested = step >= 24

    first = train(config, tmp_path / "resumed", on_start=started.append, on_step=stop_at_25)
    assert first.interrupted and first.step == 25
    resumed = train(config, tmp_path / "resumed", resume=True)
    assert resumed.step == 40
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_run_dir_protection(tmp_path):
    config = default_config("gmm2d", steps=2, batch_size=8, model=TINY_MLP)
    train(config, tmp_path / "run")
    before = (tmp_path / "run" / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(RunDirError):
        train(config, tmp_path / "run")
    assert (tmp_path / "run" / CHECKPOINT_FILE).read_bytes() == before
    with pytest.raises(RunDirError):
        train(config, tmp_path / "empty", resume=True)
    train(config, tmp_path / "run", overwrite=True)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    config = default_config("gmm2d", steps=30, batch_size=16, checkpoint_every=10, model=TINY_MLP)
    original = Trainer.loss_on_batch

    def loss_on_batch(self, x, labels):
        loss = original(self, x, labels)
        return loss * math.nan if self.step >= 14 else loss

    monkeypatch.setattr(Trainer, "loss_on_batch", loss_on_batch)
    with pytest.raises(TrainingDiverged):
        train(config, tmp_path / "run")
    groups, meta = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    assert meta["step"] == 10
    assert all(torch.isfinite(v).all() for v in groups["model"].values())


def test_load_model_rejects_bad_files(tmp_path):
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CHECKPOINT_FILE).write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "bad")


def test_config_validation():
    with pytest.raises(ValueError):
        default_config("gmm2d", p_uncond=1.5)
    with pytest.raises(ValueError):
        default_config("mnist")


def test_resume_after_interruption_drops_log_lines_past_the_checkpoint(tmp_path, monkeypatch):
    config = dict(batch_size=16, checkpoint_every=10, log_every=5, model=TINY_MLP)
    original = Trainer.train_step

    def interrupted(self):
        if self.step == 17:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(default_config("gmm2d", steps=30, **config), tmp_path / "run")
    monkeypatch.setattr(Trainer, "train_step", original)
    train(default_config("gmm2d", steps=30, **config), tmp_path / "run", resume=True)
    lines = [json.loads(line) for line in (tmp_path / "run" / LOSS_FILE).read_text().splitlines()]
    assert [e["step"] for e in lines if "loss" in e] == [5, 10, 15, 20, 25, 30]
