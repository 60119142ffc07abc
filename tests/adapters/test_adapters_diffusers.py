"""diffusers models behind the eps_fn contract: tiny randomly initialised DiT (+ VAE) and class-conditional UNet2DModel
pipelines saved with save_pretrained, checked against the models' own outputs and diffusers' own CFG and sampling
loops; the CLI's --diffusers paths and every bad input. Skipped when the optional extra is missing."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers", reason="optional extra missing: pip install 'cfgdiff[diffusers]'")

from cfgdiff.adapters.diffusers import (  # noqa: E402
    DiffusersEpsFn,
    DiffusersError,
    NoNullLabelError,
    load_diffusers,
)
from cfgdiff.adapters.discrete import logsnr_grid_from_timesteps  # noqa: E402
from cfgdiff.guidance import cfg  # noqa: E402
from cfgdiff.sampling.solvers import sample_ddim, sample_dpmpp_2m  # noqa: E402
from tests.helpers import assert_usage_error, run_cli  # noqa: E402

# diffusers' DPM-Solver scheduler builds a numpy array from a tensor the way numpy 2 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ID2LABEL = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 2: "great white shark"}


def _tiny_dit(num_embeds_ada_norm=1000):
    torch.manual_seed(0)
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=4,
        patch_size=2, num_embeds_ada_norm=num_embeds_ada_norm)


def _tiny_unet(num_class_embeds=11):
    torch.manual_seed(1)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=num_class_embeds)


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    """A latent DiT pipeline (DiT-XL/2's layout and null class 1000, tiny sizes) saved with save_pretrained."""
    torch.manual_seed(2)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8), latent_channels=4,
        norm_num_groups=4, layers_per_block=1, sample_size=8)
    scheduler = diffusers.DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False,
                                        set_alpha_to_one=True)
    pipe = diffusers.DiTPipeline(transformer=_tiny_dit(), vae=vae, scheduler=scheduler, id2label=ID2LABEL)
    pipe.register_to_config(id2label=ID2LABEL)  # DiT-XL/2's hub folder keeps id2label in model_index.json
    path = tmp_path_factory.mktemp("dit")
    pipe.save_pretrained(path)
    return path


def _save_unet_pipeline(path, unet, prediction_type):
    scheduler = diffusers.DDPMScheduler(beta_schedule="linear", prediction_type=prediction_type, clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    """A class-conditional v-prediction UNet2DModel on digits' shape (1×8×8), 10 classes + null row 10."""
    return _save_unet_pipeline(tmp_path_factory.mktemp("unet"), _tiny_unet(), "v_prediction")


@pytest.fixture(scope="module")
def dit(dit_dir):
    return load_diffusers(dit_dir)


@pytest.fixture(scope="module")
def unet(unet_dir):
    return load_diffusers(unet_dir, null_label=10)


def _z(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- the adapter against the models themselves -------------------------------------------------------------


def test_dit_contract_attributes_and_class_names(dit):
    e = dit.eps_fn
    assert e.num_classes == 1000 and e.model_null_label == 1000  # DiT's null row is cfgdiff's K
    assert e.data_shape == (4, 4, 4) and dit.image_shape == (3, 8, 8) and dit.is_latent
    assert e.class_names[:3] == ("tench", "goldfish", "great white shark") and e.class_names[3] == "3"
    assert e.x_bound is None  # latents are not clipped
    assert e.logsnr_min == pytest.approx(e.schedule.logsnrs[-1].item()) and e.logsnr_max > 9


def test_dit_eps_equals_the_models_own_output_at_integer_timesteps(dit):
    """Learned variance: the transformer returns 8 channels, the adapter keeps the ε half (the first 4)."""
    e = dit.eps_fn
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    labels = torch.tensor([0, 1, 2, 999, 1000, 5])
    z = _z((6, 4, 4, 4))
    out = e.model(z, timestep=t, class_labels=labels).sample  # [6, 8, 4, 4]
    assert out.shape[1] == 8 and out[:, :4].abs().mean() > 1e-3 and not torch.allclose(out[:, :4], out[:, 4:])
    with torch.no_grad():
        eps = e(z, e.schedule.logsnrs[t], labels)
    assert eps.shape == z.shape
    assert torch.allclose(eps, out[:, :4], atol=1e-6)


def test_unet_v_prediction_is_converted_to_eps_at_integer_timesteps(unet):
    """ε = α v + σ z with α² = ᾱ_t from the scheduler's own table (v-prediction, Salimans & Ho 2022)."""
    e, scheduler = unet.eps_fn, unet.scheduler
    assert e.prediction_type == "v_prediction" and e.num_classes == 10 and e.data_shape == (1, 8, 8)
    t = torch.tensor([0, 100, 600, 999])
    labels = torch.tensor([0, 3, 9, 10])
    z = _z((4, 1, 8, 8), seed=1)
    v = e.model(z, t, class_labels=labels).sample
    abar = scheduler.alphas_cumprod[t].to(torch.float64).reshape(-1, 1, 1, 1)
    expected = abar.sqrt() * v + (1 - abar).sqrt() * z
    with torch.no_grad():
        eps = e(z, e.schedule.logsnrs[t], labels)
    assert v.abs().mean() > 1e-3
    assert torch.allclose(eps, expected.to(torch.float32), atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_epsilon_and_sample_prediction(prediction_type):
    model = _tiny_unet()
    abar = diffusers.DDPMScheduler(beta_schedule="linear").alphas_cumprod
    e = DiffusersEpsFn(model, abar, prediction_type=prediction_type, null_label=10)
    t = torch.tensor([3, 400, 900])
    z = _z((3, 1, 8, 8), seed=2)
    labels = torch.tensor([1, 2, 10])
    out = model(z, t, class_labels=labels).sample
    a = abar[t].to(torch.float64).reshape(-1, 1, 1, 1)
    expected = out if prediction_type == "epsilon" else (z - a.sqrt() * out) / (1 - a).sqrt()
    with torch.no_grad():
        assert torch.allclose(e(z, e.schedule.logsnrs[t], labels), expected.float(), atol=1e-4)


def test_fractional_logsnr_reaches_the_model_as_a_fractional_timestep(unet):
    e = unet.eps_fn
    lam = 0.5 * (e.schedule.logsnrs[300] + e.schedule.logsnrs[301])
    z, labels = _z((1, 1, 8, 8), seed=3), torch.tensor([4])
    v = e.model(z, torch.tensor([300.5]), class_labels=labels).sample
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    with torch.no_grad():
        assert torch.allclose(e(z, lam.reshape(1), labels), (alpha * v + sigma * z).float(), atol=1e-5)


def test_cfg_through_the_adapter_equals_dit_pipeline_arithmetic(dit):
    """DiTPipeline: one batched call on [z, z] with [labels, 1000], ε̃ = ε_u + s (ε_c - ε_u); s = w + 1."""
    e, w = dit.eps_fn, 1.5
    t = torch.tensor(620)
    z, labels = _z((3, 4, 4, 4), seed=4), torch.tensor([0, 1, 2])
    out = e.model(torch.cat([z, z]), timestep=t.expand(6), class_labels=torch.cat(
        [labels, torch.full((3,), 1000)])).sample
    cond, uncond = out[:, :4].split(3)
    assert not torch.allclose(cond, uncond)
    expected = uncond + (w + 1.0) * (cond - uncond)
    with torch.no_grad():
        guided = cfg(e, w)(z, e.schedule.logsnrs[t].expand(3), labels)
    assert torch.allclose(guided, expected, atol=1e-5)


@pytest.mark.parametrize("scheduler_name", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_dit_pipeline_images_equal_cfgdiff_sampler_on_its_timesteps(dit_dir, dit, scheduler_name):
    """diffusers' own DiTPipeline loop (DDIM or DPM-Solver++(2M), guidance_scale s) and cfgdiff's same-named sampler
    at w = s - 1 on the scheduler's timesteps as a log-SNR grid, from the same latents, decoded by the same VAE."""
    pipe = diffusers.DiTPipeline.from_pretrained(dit_dir, use_safetensors=True)
    pipe.scheduler = getattr(diffusers, scheduler_name).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    s, steps, labels = 3.0, 6, [0, 2, 7]
    images = pipe(class_labels=labels, guidance_scale=s, num_inference_steps=steps,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images  # [3, 3, 8, 8] in [0, 1]
    z0 = torch.randn((3, 4, 4, 4), generator=torch.Generator().manual_seed(0))  # randn_tensor on the CPU
    pipe.scheduler.set_timesteps(steps)
    grid = logsnr_grid_from_timesteps(dit.eps_fn.schedule, pipe.scheduler.timesteps)
    sampler = sample_ddim if scheduler_name == "DDIMScheduler" else sample_dpmpp_2m
    x = sampler(cfg(dit.eps_fn, s - 1.0), (3, 4, 4, 4), torch.tensor(labels), grid=grid, z=z0)
    ours = (dit.decode(x) / 2 + 0.5).clamp(0, 1)
    assert images.shape == ours.shape == (3, 3, 8, 8)
    assert (images - ours).abs().max() < 1e-4


def test_unet_ddim_loop_equals_cfgdiff_ddim(unet):
    """A diffusers DDIM scheduler loop with CFG on the v-prediction UNet (the pipelines' arithmetic) and cfgdiff's
    sample_ddim at w = s - 1 on its timesteps: the same images."""
    e = unet.eps_fn
    scheduler = diffusers.DDIMScheduler.from_config(unet.scheduler.config, set_alpha_to_one=True)
    scheduler.set_timesteps(8)
    s, labels = 2.5, torch.tensor([0, 5, 9, 3])
    z0 = _z((4, 1, 8, 8), seed=5)
    latents = z0.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = e.model(torch.cat([latents, latents]), t.expand(8), class_labels=torch.cat(
                [labels, torch.full((4,), 10)])).sample
            cond, uncond = out.chunk(2)
            latents = scheduler.step(uncond + s * (cond - uncond), t, latents).prev_sample
    grid = logsnr_grid_from_timesteps(e.schedule, scheduler.timesteps)
    x = sample_ddim(cfg(e, s - 1.0), (4, 1, 8, 8), labels, grid=grid, z=z0)
    assert (x - latents).abs().max() < 1e-4


def test_latent_decoding_shape_and_batching(dit):
    z = _z((5, 4, 4, 4), seed=6)
    dit.decode_batch_size = 2
    try:
        x = dit.decode(z)
    finally:
        dit.decode_batch_size = 64
    assert x.shape == (5, 3, 8, 8) and x.abs().max() <= 1.0
    scale = dit.vae.config.scaling_factor
    with torch.no_grad():
        direct = dit.vae.decode(z / scale).sample.clamp(-1, 1)
    assert torch.allclose(x, direct, atol=1e-5)


def test_no_null_label_refuses_guidance_but_samples_at_w0(unet_dir):
    loaded = load_diffusers(unet_dir)  # a UNet has no null label unless named
    e = loaded.eps_fn
    assert not e.has_null_label and e.num_classes == 11
    z, lam = _z((2, 1, 8, 8)), torch.zeros(2)
    with torch.no_grad():
        assert e(z, lam, torch.tensor([0, 10])).shape == z.shape
        with pytest.raises(NoNullLabelError, match="no null"):
            cfg(e, 1.0)(z, lam, torch.tensor([0, 1]))


def test_classes_subset_and_null_label_remap():
    e = DiffusersEpsFn(_tiny_unet(), diffusers.DDPMScheduler().alphas_cumprod, null_label=0, classes=[3, 7])
    assert e.num_classes == 2 and e.label_map.tolist() == [3, 7, 0]
    with pytest.raises(DiffusersError, match="null label 11"):
        DiffusersEpsFn(_tiny_unet(), diffusers.DDPMScheduler().alphas_cumprod, null_label=11)


def test_the_samplers_stay_in_the_trained_range(unet):
    """With the CLI's clipped range, every λ the sampler evaluates lies in [λ_{T-1}, λ_0]."""
    e = unet.eps_fn
    seen = []

    def recording(z, logsnr, labels):
        seen.append(logsnr.clone())
        return e(z, logsnr, labels)

    recording.num_classes = e.num_classes
    sample_dpmpp_2m(recording, (2, 1, 8, 8), torch.tensor([1, 2]), steps=6, logsnr_min=e.logsnr_min,
                    logsnr_max=e.logsnr_max, generator=torch.Generator().manual_seed(0))
    lam = torch.cat(seen).double()
    assert lam.min() >= e.logsnr_min - 1e-5 and lam.max() <= e.logsnr_max + 1e-5


# -- the command line ----------------------------------------------------------------------------------------


def test_cli_sample_latent_dit_with_class_names(capsys, dit_dir, tmp_path):
    import numpy as np

    out = tmp_path / "dit.png"
    code, stdout, err = run_cli(capsys, [
        "sample", "--diffusers", str(dit_dir), "--classes", "goldfish,Tinca tinca,2", "--w", "0,1.5",
        "--n-per-class", "2", "--steps", "3", "--sampler", "dpmpp_2m", "--out", str(out), "--no-progress"])
    assert code == 0, err
    data = np.load(out.with_suffix(".npz"))
    assert data["samples"].shape == (2, 6, 3, 8, 8)  # decoded images, not latents
    assert list(data["labels"]) == [1, 1, 0, 0, 2, 2]
    assert list(data["nfe_per_sample"]) == [3.0, 6.0]
    assert out.is_file()


def test_cli_sample_unet_every_sampler_option(capsys, unet_dir, tmp_path):
    out = tmp_path / "u.png"
    code, _, err = run_cli(capsys, [
        "sample", "--diffusers", str(unet_dir), "--null-label", "10", "--guidance-scale", "2", "--classes", "3",
        "--n-per-class", "3", "--steps", "4", "--sampler", "heun", "--interval", "0.5,5", "--batch-size", "2",
        "--out", str(out), "--no-progress"])
    assert code == 0, err


def test_cli_eval_unet_on_digits_features(capsys, unet_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, [
        "eval", "--diffusers", str(unet_dir), "--null-label", "10", "--data", "digits", "--w", "0,1", "--n", "20",
        "--steps", "2", "--sampler", "ddim", "--out", str(out), "--no-progress"])
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert [row["w"] for row in result["rows"]] == [0.0, 1.0]
    assert [row["nfe_per_sample"] for row in result["rows"]] == [2.0, 4.0]
    assert "--diffusers" in result["meta"]["command"]


def test_cli_bad_inputs_exit_2_with_one_line(capsys, dit_dir, unet_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(capsys, ["sample", "--diffusers", str(empty)], "not a saved diffusers pipeline")
    assert_usage_error(capsys, ["sample", "--diffusers", "facebook/DiT-XL-2-256"], "save_pretrained")
    assert_usage_error(capsys, ["sample", "--diffusers", str(tmp_path / "nowhere")], "no folder at")
    assert_usage_error(capsys, ["sample", "--diffusers", str(unet_dir), "--w", "1"], "no null")
    assert_usage_error(capsys, ["sample", "--diffusers", str(dit_dir), "--classes", "zebra"],
                       "no class named 'zebra'")
    assert_usage_error(capsys, ["sample", "--diffusers", str(dit_dir), "--null-label", "5000"], "null label 5000")
    assert_usage_error(capsys, ["eval", "--diffusers", str(dit_dir)], "needs --data")
    assert_usage_error(capsys, ["eval", "--diffusers", str(dit_dir), "--data", "digits"], "the model makes (3, 8, 8)")
    assert_usage_error(capsys, ["sample", "runs/x", "--diffusers", str(dit_dir)], "not both")
    assert_usage_error(capsys, ["sample"], "--diffusers DIR")
    assert_usage_error(capsys, ["sample", "runs/x", "--null-label", "3"], "--null-label goes with --diffusers")
    assert not any(p.suffix == ".png" for p in tmp_path.rglob("*"))


def test_cli_refuses_an_unconditional_model(capsys, tmp_path):
    torch.manual_seed(3)
    uncond = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                   block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                   up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    path = _save_unet_pipeline(tmp_path / "uncond", uncond, "epsilon")
    assert_usage_error(capsys, ["sample", "--diffusers", str(path), "--w", "1"], "no class conditioning")


def test_cli_refuses_pickled_weights(capsys, unet_dir, tmp_path):
    path = tmp_path / "pickled"
    (path / "unet").mkdir(parents=True)
    (path / "scheduler").mkdir()
    (path / "model_index.json").write_text((unet_dir / "model_index.json").read_text())
    (path / "unet" / "config.json").write_text((unet_dir / "unet" / "config.json").read_text())
    (path / "scheduler" / "scheduler_config.json").write_text(
        (unet_dir / "scheduler" / "scheduler_config.json").read_text())
    (path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    assert_usage_error(capsys, ["sample", "--diffusers", str(path), "--w", "0"], "never unpickles")
