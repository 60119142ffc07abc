"""The noisy classifier p_φ(c | z_λ, λ): shapes, gradients for guidance, checkpoints, resume, the CLI."""

import json

import pytest
import torch

from cfgdiff.cli import main
from cfgdiff.guidance import classifier_guidance
from cfgdiff.runtime.checkpoint import CheckpointError
from cfgdiff.training.classifier import (
    CLASSIFIER_FILE,
    ClassifierConfig,
    NoisyClassifier,
    load_classifier,
    train_classifier,
)


def test_log_prob_is_normalised_and_differentiable():
    torch.manual_seed(0)
    model = NoisyClassifier((1, 8, 8), 10, base_channels=8)
    z = torch.randn(4, 1, 8, 8, requires_grad=True)
    logsnr = torch.tensor([-5.0, 0.0, 3.0, 10.0])
    logits = model(z, logsnr)
    assert logits.shape == (4, 10)
    log_probs = torch.stack([model.log_prob_fn(z, logsnr, torch.full((4,), c)) for c in range(10)], dim=1)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(4))
    (grad,) = torch.autograd.grad(log_probs[:, 3].sum(), z)
    assert grad.shape == z.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_guidance_with_the_classifier_is_an_eps_fn():
    torch.manual_seed(0)
    classifier = NoisyClassifier((1, 8, 8), 10, base_channels=8).eval().requires_grad_(False)

    class ZeroEps:
        num_classes = 10

        def __call__(self, z, logsnr, labels):
            return torch.zeros_like(z)

    guided = classifier_guidance(ZeroEps(), classifier.log_prob_fn, 2.0)
    z = torch.randn(3, 1, 8, 8)
    with torch.inference_mode():
        eps = guided(z, torch.zeros(3), torch.tensor([0, 1, 2]))
    assert eps.shape == z.shape and eps.abs().sum() > 0


def test_train_save_resume_load(tmp_path):
    config = ClassifierConfig(steps=3, batch_size=8, base_channels=8, checkpoint_every=2)
    ema, meta = train_classifier(config, tmp_path)
    assert meta["step"] == 3 and (tmp_path / CLASSIFIER_FILE).is_file()
    assert set(meta["noisy_test_accuracy"]) == {"-5.0", "0.0", "5.0"}
    loaded = load_classifier(tmp_path)
    z, lam = torch.randn(2, 1, 8, 8), torch.zeros(2)
    torch.testing.assert_close(loaded(z, lam), ema(z, lam))
    with pytest.raises(CheckpointError, match="--resume"):
        train_classifier(config, tmp_path)
    _, meta = train_classifier(ClassifierConfig(steps=5, batch_size=8, base_channels=8), tmp_path, resume=True)
    assert meta["step"] == 5 and meta["train_config"]["checkpoint_every"] == 2  # the stored config continues
    events = [json.loads(line) for line in (tmp_path / "classifier-loss.jsonl").read_text().splitlines()]
    assert [e for e in events if "event" in e] == [{"event": "resume", "step": 3, "changed": {"steps": [3, 5]}}]


def test_load_rejects_other_checkpoints(tmp_path, digits_run):
    with pytest.raises(CheckpointError, match="no noisy classifier"):
        load_classifier(tmp_path)
    with pytest.raises(CheckpointError, match="not a noisy-classifier"):
        load_classifier(digits_run / "checkpoint.safetensors")


def test_cli_train_classifier(capsys, tmp_path):
    code = main(["train-classifier", "--run-dir", str(tmp_path / "c"), "--steps", "2", "--batch-size", "8",
                 "--base-channels", "8", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "noisy test accuracy" in out
    code = main(["train-classifier", "--run-dir", str(tmp_path / "c"), "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--resume" in err
