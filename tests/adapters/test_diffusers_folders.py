"""``--diffusers DIR`` for the folders users have: a saved pipeline (tests/adapters/test_adapters_diffusers.py), a
training checkpoint's sub-folders without model_index.json, and a bare ``unet.save_pretrained(DIR)``. The adapter's
ε̂ at a timestep's own λ_t is checked against the model's own output converted by hand, for each layout; the
schedule comes from scheduler/, from --diffusers-scheduler, or DDPMScheduler's defaults with a one-line note; what
cannot be used is refused in one line."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers", reason="optional extra missing: pip install 'cfgdiff[diffusers]'")

from cfgdiff.adapters.diffusers import DiffusersError, folder_layout, load_diffusers  # noqa: E402
from tests.helpers import assert_usage_error, run_cli  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _tiny_unet():
    torch.manual_seed(1)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=11)
    with torch.no_grad():
        torch.nn.init.normal_(unet.conv_out.weight, std=0.1)  # not the zero output of a fresh model
    return unet


@pytest.fixture(scope="module")
def unet():
    return _tiny_unet().eval()


@pytest.fixture(scope="module")
def checkpoint_dir(unet, tmp_path_factory):
    """What a training script's checkpoint folder holds: unet/, scheduler/ (v-prediction, a cosine schedule) and
    the trainer's own pickles, which must never be read."""
    path = tmp_path_factory.mktemp("checkpoint-500")
    unet.save_pretrained(path / "unet")
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").save_pretrained(
        path / "scheduler")
    for junk in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (path / junk).write_bytes(b"\x80\x04 never unpickled")
    return path


@pytest.fixture(scope="module")
def bare_dir(unet, tmp_path_factory):
    """``unet.save_pretrained(DIR)``: config.json and diffusion_pytorch_model.safetensors, nothing else."""
    path = tmp_path_factory.mktemp("bare")
    unet.save_pretrained(path)
    return path


def _eps_by_hand(unet, scheduler, z, t, labels):
    """ε from the model's own output at integer timesteps t: ε itself, or ε = α v + σ z for v-prediction."""
    out = unet(z, t, class_labels=labels).sample
    if scheduler.config.prediction_type == "epsilon":
        return out
    alpha_bar = scheduler.alphas_cumprod[t].to(z.dtype)[:, None, None, None]
    return alpha_bar.sqrt() * out + (1 - alpha_bar).sqrt() * z


def _check_eps(loaded, unet, scheduler):
    t = torch.tensor([0, 17, 500, 990])  # (at 999 the cosine ᾱ is below the adapter's clamp ALPHA_CUMPROD_EPS)
    alpha_bar = scheduler.alphas_cumprod[t].double()
    logsnr = torch.log(alpha_bar / (1 - alpha_bar))  # λ_t (float64): the adapter calls the network at t itself
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 9, 10])
    with torch.no_grad():
        got = loaded.eps_fn(z, logsnr, labels)
        expected = _eps_by_hand(unet, scheduler, z, t, labels)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_three_layouts_are_told_apart(checkpoint_dir, bare_dir, tmp_path):
    assert folder_layout(checkpoint_dir) == "components"
    assert folder_layout(bare_dir) == "model"
    assert folder_layout(tmp_path) is None


def test_a_training_checkpoint_folder_loads_with_its_scheduler(checkpoint_dir, unet):
    loaded = load_diffusers(checkpoint_dir, null_label=10)
    assert loaded.layout == "components" and loaded.notes == []  # its scheduler/ says the schedule
    assert loaded.eps_fn.prediction_type == "v_prediction"
    scheduler = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    torch.testing.assert_close(loaded.eps_fn.schedule.alphas_cumprod.float(), scheduler.alphas_cumprod)
    _check_eps(loaded, unet, scheduler)


def test_a_bare_model_folder_assumes_ddpm_defaults_and_says_so(bare_dir, unet):
    loaded = load_diffusers(bare_dir, null_label=10)
    assert loaded.layout == "model"
    assert len(loaded.notes) == 1 and "assuming DDPMScheduler's defaults" in loaded.notes[0]
    _check_eps(loaded, unet, diffusers.DDPMScheduler())


def test_a_checkpoint_without_scheduler_assumes_the_defaults_too(unet, tmp_path):
    unet.save_pretrained(tmp_path / "unet")
    loaded = load_diffusers(tmp_path, null_label=10)
    assert loaded.layout == "components" and "no model_index.json" in loaded.notes[0]
    _check_eps(loaded, unet, diffusers.DDPMScheduler())


@pytest.mark.parametrize("how", ["folder", "parent", "class"])
def test_the_scheduler_can_be_named(bare_dir, checkpoint_dir, unet, how):
    scheduler = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    source = {"folder": checkpoint_dir / "scheduler", "parent": checkpoint_dir, "class": "DDIMScheduler"}[how]
    loaded = load_diffusers(bare_dir, null_label=10, scheduler=source)
    assert loaded.notes == []
    if how == "class":  # DDIMScheduler's defaults: DDPM's linear betas, epsilon prediction
        scheduler = diffusers.DDIMScheduler()
        assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    _check_eps(loaded, unet, scheduler)


def test_what_cannot_be_used_is_refused_in_one_line(unet, tmp_path):
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "notes.txt").write_text("no model here")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json_config(unet))
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04 never unpickled")
    good = tmp_path / "good"
    unet.save_pretrained(good)
    cases = [
        (tmp_path / "neither", {}, "not a saved diffusers pipeline, model or training checkpoint"),
        (pickled, {}, "never unpickles"),
        (good, {"scheduler": "NoSuchScheduler"}, "unknown scheduler class NoSuchScheduler"),
        (good, {"scheduler": "UNet2DModel"}, "unknown scheduler class UNet2DModel"),
        (good, {"scheduler": str(tmp_path / "neither")}, "no scheduler_config.json here or in scheduler/"),
        (good, {"scheduler": "a b"}, "neither a folder with scheduler_config.json nor"),
    ]
    for path, kw, needle in cases:
        with pytest.raises(DiffusersError, match=needle) as info:
            load_diffusers(path, null_label=10, **kw)
        assert "\n" not in str(info.value)


def json_config(unet):
    import json

    return json.dumps({"_class_name": "UNet2DModel", **dict(unet.config)})


def test_cli_samples_a_bare_model_with_one_note(capsys, bare_dir, tmp_path):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, ["sample", "--diffusers", str(bare_dir), "--null-label", "10", "--w", "0,1",
                                   "--n-per-class", "1", "--steps", "2", "--sampler", "ddim", "--out", str(out),
                                   "--no-progress"])
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("cfgdiff: note:")]
    assert len(notes) == 1 and "DDPMScheduler" in notes[0]
    data = np.load(out.with_suffix(".npz"))
    assert list(data["nfe_per_sample"]) == [2, 4]


def test_cli_samples_a_checkpoint_folder_with_a_named_scheduler(capsys, checkpoint_dir, tmp_path):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, ["sample", "--diffusers", str(checkpoint_dir / "unet"), "--diffusers-scheduler",
                                   str(checkpoint_dir / "scheduler"), "--null-label", "10", "--w", "1",
                                   "--n-per-class", "1", "--steps", "2", "--sampler", "ddim", "--out", str(out),
                                   "--no-progress"])
    assert code == 0, err
    assert "note" not in err
    assert np.isfinite(np.load(out.with_suffix(".npz"))["samples"]).all()


def test_cli_refusals_exit_2(capsys, tmp_path, bare_dir):
    (tmp_path / "neither").mkdir()
    assert_usage_error(capsys, ["sample", "--diffusers", str(tmp_path / "neither")],
                       "not a saved diffusers pipeline, model or training checkpoint")
    assert_usage_error(capsys, ["sample", "--diffusers", str(bare_dir), "--diffusers-scheduler", "Nope", "--w", "0"],
                       "unknown scheduler class Nope")
    assert_usage_error(capsys, ["sample", "runs/x", "--diffusers-scheduler", "DDPMScheduler"],
                       "--diffusers-scheduler goes with --diffusers")
    assert not any(p.suffix == ".png" for p in tmp_path.rglob("*"))
