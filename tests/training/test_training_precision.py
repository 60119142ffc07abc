"""The training loop's form: --precision / --memory-format fold the old switches in, auto is measured without
touching the run (no random number drawn, the weights as initialised), and never bf16 without the hardware."""

import pytest
import torch

from cfgdiff.data import load_dataset
from cfgdiff.runtime import precision
from cfgdiff.training import LoopConfig, TrainConfig, default_config, diffusion_trainer
from tests.training_support import TINY_MLP, TINY_UNET


def _trainer(data="gmm2d", model=TINY_MLP, **loop):
    config = default_config(data, model=model, **{"batch_size": 16, **loop})
    return diffusion_trainer(config, load_dataset(data))


def test_the_old_switches_fold_into_the_form():
    config = LoopConfig(autocast=True, channels_last=True)
    assert (config.precision, config.memory_format) == ("bf16", "channels-last")
    assert "autocast" not in config.to_json() and "channels_last" not in config.to_json()
    old = TrainConfig.from_json({"autocast": True})  # a config.json written before precision existed
    assert old.precision == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        LoopConfig(precision="fp16").validate()


@pytest.mark.parametrize("has_bf16", [False, True])
def test_auto_is_measured_without_touching_the_run(monkeypatch, cache_dir, has_bf16):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: has_bf16)
    plain = _trainer()
    auto = _trainer(precision="auto")
    if has_bf16:
        assert auto.form.chosen_by == "measured" and auto.form.precision in ("fp32", "bf16")
        assert list((cache_dir / precision.CACHE_SUBDIR).glob("*.json"))
        assert _trainer(precision="auto").form.chosen_by == "cached"
    else:
        assert (auto.form.precision, auto.form.chosen_by) == ("fp32", "only candidate")
    for a, b in zip(plain.model.state_dict().values(), auto.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the weights as initialised, untouched by the measurement
    assert all(p.grad is None for p in auto.model.parameters())
    if auto.form.precision == "fp32":  # then the run is the fp32 run, step for step
        assert auto.train_step() == plain.train_step()


def test_auto_layout_of_an_image_network_is_applied_to_weights_and_batches(monkeypatch, cache_dir):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    trainer = _trainer("digits", TINY_UNET, batch_size=8, memory_format="auto")
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    channels_last = trainer.form.memory_format == "channels-last"
    assert trainer.form.chosen_by == "measured"
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert trainer.stream.channels_last == channels_last
    assert trainer.metadata()["network_form"]["memory_format"] == trainer.form.memory_format
