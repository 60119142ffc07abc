"""The generic Trainer and ``fit``: accumulation, non-finite batches, precision options, logging, signals,
resume with a streaming loader, and a new kind of network trained through the same loop."""

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from cfgdiff.data import load_dataset
from cfgdiff.training import (
    CHECKPOINT_FILE,
    LOSS_FILE,
    LoopConfig,
    RunLayout,
    Trainer,
    TrainingDiverged,
    classifier_loss,
    default_config,
    diffusion_trainer,
    fit,
    train,
)
from tests.training_support import (
    TINY_MLP,
    TINY_UNET,
    fixed_noise_loss,
    fork_cli,
    image_dataset,
    states_equal,
    wait_for,
)


def _log(run_dir, name=LOSS_FILE):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def _gmm_trainer(**loop):
    config = default_config("gmm2d", model=TINY_MLP, **{"batch_size": 32, **loop})
    return diffusion_trainer(config, load_dataset("gmm2d"))


def test_gradient_accumulation_equals_the_full_batch():
    """K micro-batches of B/K give the gradient of the mean over B: with noise a function of the example
    (``fixed_noise_loss``) both runs see the same per-example losses, so after 5 AdamW steps the weights agree
    to float32 rounding of the reordered sums (≈ 1e-7 relative per step, amplified at most by Adam's
    normalisation ~ lr·steps: atol 1e-5 is 100× that margin and far below one step's update, lr = 1e-3)."""
    full, accum = _gmm_trainer(), _gmm_trainer(grad_accum=4)
    for trainer in (full, accum):
        trainer.loss_fn = fixed_noise_loss
    losses_full = [full.train_step() for _ in range(5)]
    losses_accum = [accum.train_step() for _ in range(5)]
    assert accum.stream.size == 8 and full.stream.size == 32
    torch.testing.assert_close(torch.tensor(losses_accum), torch.tensor(losses_full), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(full.model.state_dict().items(), accum.model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=name)
    assert not states_equal(full.model.state_dict(), _gmm_trainer().model.state_dict())  # it did train


def test_skip_nonfinite_skips_updates_counts_them_and_then_stops(tmp_path, monkeypatch):
    config = default_config("gmm2d", steps=12, batch_size=16, checkpoint_every=4, log_every=2, skip_nonfinite=2,
                            model=TINY_MLP)
    original = Trainer.loss_on_batch

    def loss_on_batch(self, x, labels):  # NaN at steps 3 and 5, then from step 9 on
        loss = original(self, x, labels)
        return loss * math.nan if self.step + 1 in (3, 5) or self.step + 1 >= 9 else loss

    monkeypatch.setattr(Trainer, "loss_on_batch", loss_on_batch)
    with pytest.raises(TrainingDiverged, match="at step 9"):
        train(config, tmp_path)
    log = _log(tmp_path)
    assert [e["step"] for e in log if e.get("event") == "skipped_nonfinite"] == [3, 5]
    assert [(e["step"], e["skipped"]) for e in log if "loss" in e] == [(2, 0), (4, 1), (6, 2), (8, 2)]
    assert all(math.isfinite(e["loss"]) for e in log if "loss" in e)
    assert log[-1]["event"] == "diverged" and log[-1]["step"] == 9
    from cfgdiff.runtime.checkpoint import read_metadata

    meta = read_metadata(tmp_path / CHECKPOINT_FILE)
    assert meta["step"] == 8 and meta["skipped_nonfinite"] == 2


def test_bf16_autocast_runs_the_network_in_bf16_on_cpu():
    trainer = _gmm_trainer(autocast=True)
    dtypes = []
    first_linear = next(m for m in trainer.model.modules() if isinstance(m, nn.Linear))
    first_linear.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    loss = trainer.train_step()
    assert dtypes == [torch.bfloat16] and math.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32


def test_compile_with_the_eager_backend_matches_the_plain_network():
    plain, compiled = _gmm_trainer(), _gmm_trainer(compile=True, compile_backend="eager")
    assert compiled.net is not compiled.model
    for _ in range(3):
        torch.testing.assert_close(compiled.train_step(), plain.train_step(), rtol=1e-6, atol=0)
    for a, b in zip(plain.model.state_dict().values(), compiled.model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_channels_last_keeps_the_result():
    config = default_config("digits", batch_size=8, model=TINY_UNET)
    data = load_dataset("digits")
    plain = diffusion_trainer(config, data)
    fast = diffusion_trainer(default_config("digits", batch_size=8, model=TINY_UNET, channels_last=True), data)
    conv = next(m for m in fast.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.stream.next_step()[0].x.is_contiguous(memory_format=torch.channels_last)
    fast.stream.load_state(0)
    for _ in range(2):
        torch.testing.assert_close(fast.train_step(), plain.train_step(), rtol=1e-4, atol=1e-6)


def test_resume_is_bit_exact_with_a_streaming_loader_and_workers(tmp_path):
    config = dict(batch_size=8, checkpoint_every=3, log_every=2, model=TINY_UNET, hflip=True, loader="streaming",
                  workers=2, lr_schedule="constant")  # flat: the learning rate does not depend on the total
    straight = train(default_config("digits", steps=7, **config), tmp_path / "straight")
    train(default_config("digits", steps=4, **config), tmp_path / "resumed")
    resumed = train(default_config("digits", steps=7, **config), tmp_path / "resumed", resume=True)
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.ema.state_dict(), resumed.ema.state_dict())
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    assert [e["loss"] for e in _log(tmp_path / "straight")][-2:] == [e.get("loss") for e in
                                                                      _log(tmp_path / "resumed")][-2:]


def test_run_dir_records_config_and_data_provenance(tmp_path):
    train(default_config("gmm2d", steps=2, batch_size=8, model=TINY_MLP), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["hflip"] is False and config["grad_accum"] == 1 and config["steps"] == 2
    assert json.loads((tmp_path / "data.json").read_text()) == load_dataset("gmm2d").source


def test_save_every_minutes_writes_between_step_checkpoints(tmp_path):
    config = default_config("gmm2d", steps=6, batch_size=8, checkpoint_every=100, keep=10,
                            save_every_minutes=1e-9, model=TINY_MLP)
    train(config, tmp_path)
    from cfgdiff.training import DIFFUSION_LAYOUT

    assert [s for s, _ in DIFFUSION_LAYOUT.step_files(tmp_path)] == [0, 1, 2, 3, 4, 5, 6]


def test_tensorboard_events_beside_the_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(default_config("gmm2d", steps=4, batch_size=8, log_every=2, tensorboard=True, model=TINY_MLP), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("train/loss")] == [2, 4]
    assert [e["step"] for e in _log(tmp_path) if "loss" in e] == [2, 4]


def test_a_new_kind_of_network_trains_through_the_same_loop(tmp_path):
    """A clean-image classifier: a model factory, ``classifier_loss`` and a data set, in its own layout."""
    data = image_dataset(60)

    def build():
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 3))

    layout = RunLayout(checkpoint="clean.safetensors", config="clean.json", loss_log="clean.jsonl",
                       provenance="clean-data.json", step_prefix="clean-step-", extra=())
    loop = LoopConfig(steps=30, batch_size=20, lr=1e-2, warmup_steps=0, checkpoint_every=10, log_every=10)
    trainer = fit(Trainer(build, classifier_loss, data, loop, metadata={"kind": "clean"}), tmp_path, layout=layout)
    log = _log(tmp_path, "clean.jsonl")
    assert log[-1]["loss"] < log[0]["loss"]
    from cfgdiff.runtime.checkpoint import read_metadata

    meta = read_metadata(tmp_path / "clean.safetensors")
    assert meta["kind"] == "clean" and meta["step"] == 30 and meta["train_config"]["batch_size"] == 20
    more = LoopConfig(steps=40, batch_size=20, lr=1e-2, warmup_steps=0, checkpoint_every=10, log_every=10)
    again = fit(Trainer(build, classifier_loss, data, more), tmp_path, layout=layout, resume=True)
    assert again.step == 40 and trainer.step == 30


def test_sigterm_and_sigint_finish_the_step_write_a_checkpoint_and_exit_0(tmp_path):
    """Two real `cfgdiff train` processes, one per signal, sent once each has done 3 steps."""
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        run_dir, marker = tmp_path / sig.name, tmp_path / f"{sig.name}.marker"
        env = {"CFGDIFF_PAUSE_AT": "step:3", "CFGDIFF_PAUSE_FILE": str(marker), "CFGDIFF_PAUSE_SECONDS": "0"}
        argv = ["train", "--data", "gmm2d", "--run-dir", str(run_dir), "--steps", "1000000", "--batch-size", "8",
                "--checkpoint-every", "1000000", "--no-progress"]
        procs[sig] = (fork_cli(argv, env, str(tmp_path / f"{sig.name}.out")), run_dir, marker)
    for sig, (pid, _, marker) in procs.items():
        wait_for(marker, pid)
        os.kill(pid, sig)
    from cfgdiff.runtime.checkpoint import read_metadata

    for sig, (pid, run_dir, _) in procs.items():
        _, status = os.waitpid(pid, 0)
        out = (tmp_path / f"{sig.name}.out").read_text()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
        assert f"stopped by {sig.name}" in out and f"cfgdiff train --run-dir {run_dir} --resume" in out
        step = read_metadata(run_dir / CHECKPOINT_FILE)["step"]
        assert 3 <= step < 1000000
        assert _log(run_dir)[-1] == {"event": "interrupted", "step": step, "signal": sig.name}
        trainer = train(default_config("gmm2d", steps=step + 2), run_dir, resume=True)
        assert trainer.step == step + 2


def test_deterministic_switches_torch_to_deterministic_kernels():
    try:
        _gmm_trainer(deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_cli_loop_flags_bad_values_and_resume_changes(capsys, tmp_path):
    from cfgdiff.cli import main

    run_dir = tmp_path / "run"
    base = ["train", "--data", "gmm2d", "--run-dir", str(run_dir), "--no-progress"]
    assert main([*base, "--batch-size", "16", "--grad-accum", "3", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not divisible by 1 process(es) × 3" in err and not run_dir.exists()
    assert main([*base, "--keep", "-1"]) == 2 and "--keep" in capsys.readouterr().err
    assert main([*base, "--batch-size", "16", "--grad-accum", "2", "--steps", "2", "--keep", "1"]) == 0
    assert "1 process(es) x 2 micro-batch(es) of 8" in capsys.readouterr().err  # the banner says what runs
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--steps", "3", "--grad-accum", "4",
                 "--skip-nonfinite", "2", "--no-progress"]) == 0
    resume = [e for e in _log(run_dir) if e.get("event") == "resume"][-1]
    assert resume["changed"] == {"steps": [2, 3], "grad_accum": [2, 4], "skip_nonfinite": [0, 2]}
    assert json.loads((run_dir / "config.json").read_text())["grad_accum"] == 4
