"""PAG and skip-layer guidance over diffusers models: the adapter's per-row switch against diffusers' own PAG
processor (``PAGIdentitySelfAttnProcessor2_0``, which perturbs the second half of its batch) and against the model
with a block removed; the model is left as it was; one call per step; the CLI over a saved pipeline."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers", reason="optional extra missing: pip install 'cfgdiff[diffusers]'")

from diffusers.models.attention_processor import PAGIdentitySelfAttnProcessor2_0  # noqa: E402

from cfgdiff.adapters.diffusers import DiffusersEpsFn  # noqa: E402
from cfgdiff.core.perturbation import Perturbation, perturbing  # noqa: E402
from cfgdiff.sampling.pipeline import GuidedRun  # noqa: E402
from tests.helpers import assert_usage_error, run_cli  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _randomise(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)  # a fresh model's zero-initialised layers would hide a perturbation
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def unet_eps():
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=11)
    return DiffusersEpsFn(_randomise(unet, 0), diffusers.DDPMScheduler().alphas_cumprod, null_label=10)


@pytest.fixture(scope="module")
def dit_eps():
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                          out_channels=8, num_layers=3, sample_size=4, patch_size=2,
                                          num_embeds_ada_norm=10)
    return DiffusersEpsFn(_randomise(dit, 1), diffusers.DDPMScheduler().alphas_cumprod)


def _pair(eps_fn):
    """The same input twice: row 0 plain, row 1 perturbed, as diffusers' PAG processor splits its batch."""
    z = torch.randn(1, *eps_fn.data_shape, generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1, 1)
    return z, torch.full((2,), 0.5), torch.tensor([3, 3])


@pytest.mark.parametrize(("model", "layer"), [("unet_eps", "mid_block.attentions.0"),
                                              ("unet_eps", "down_blocks.1.attentions.0"),
                                              ("dit_eps", "transformer_blocks.1.attn1")])
def test_pag_rows_equal_diffusers_own_pag_processor(request, model, layer):
    eps_fn = request.getfixturevalue(model)
    z, logsnr, labels = _pair(eps_fn)
    attention = dict(eps_fn.model.named_modules())[layer]
    own = attention.processor
    with torch.no_grad():
        with perturbing(torch.tensor([False, True]), Perturbation("attention-identity", (layer,))):
            got = eps_fn(z, logsnr, labels)
        plain = eps_fn(z, logsnr, labels)
        attention.set_processor(PAGIdentitySelfAttnProcessor2_0())  # diffusers' PAG: the second half perturbed
        try:
            reference = eps_fn(z, logsnr, labels)
        finally:
            attention.set_processor(own)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], plain[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[1], plain[1], atol=1e-3)  # the perturbation does something
    assert attention.processor is own  # the model's own processor is back


class _Passthrough(torch.nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def test_skipping_a_dit_block_is_the_model_without_it(dit_eps):
    z, logsnr, labels = _pair(dit_eps)
    blocks = dit_eps.model.transformer_blocks
    with torch.no_grad():
        with perturbing(torch.tensor([False, True]), Perturbation("skip", ("transformer_blocks.1",))):
            got = dit_eps(z, logsnr, labels)
        plain = dit_eps(z, logsnr, labels)
        block = blocks[1]
        blocks[1] = _Passthrough()
        try:
            without = dit_eps(z, logsnr, labels)
        finally:
            blocks[1] = block
    torch.testing.assert_close(got[1], without[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], plain[0], rtol=1e-5, atol=1e-5)
    assert not block._forward_hooks  # the hook is gone after the call


def test_the_layers_and_defaults_are_the_models_module_names(unet_eps, dit_eps):
    assert unet_eps.perturbable_layers("attention-identity") == (
        "down_blocks.1.attentions.0", "up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "mid_block.attentions.0")
    assert "mid_block" in unet_eps.perturbable_layers("skip")
    assert "up_blocks.0.resnets.0" not in unet_eps.perturbable_layers("skip")  # takes the skip concatenation
    assert unet_eps.default_perturbed_layers("attention-identity") == ("mid_block.attentions.0",)
    assert dit_eps.perturbable_layers("skip") == tuple(f"transformer_blocks.{i}" for i in range(3))
    assert dit_eps.default_perturbed_layers("skip") == ("transformer_blocks.1",)
    assert dit_eps.default_perturbed_layers("attention-identity") == ("transformer_blocks.1.attn1",)


@pytest.mark.parametrize("method", ["pag", "skip-layer"])
def test_a_guided_step_over_a_diffusers_model_is_one_call(dit_eps, method):
    run = GuidedRun(dit_eps, method=method, params={"scale": 1.0}, sampler="ddim", steps=3, batch_size=4)
    x = run.samples(torch.arange(4), 1.5, seed=0)
    assert torch.isfinite(x).all()
    assert run.counter.counters["denoiser"][0].batch_sizes == [12, 12, 12]  # conditional, null, perturbed rows


@pytest.fixture(scope="module")
def unet_pipeline(unet_eps, tmp_path_factory):
    path = tmp_path_factory.mktemp("pag_unet")
    diffusers.DDPMPipeline(unet=unet_eps.model, scheduler=diffusers.DDPMScheduler()).save_pretrained(path)
    return path


def test_cli_pag_over_a_saved_pipeline(capsys, unet_pipeline, tmp_path):
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, ["sample", "--diffusers", str(unet_pipeline), "--null-label", "10", "--w", "0,1",
                                   "--guidance", "pag", "--pag-layers", "mid_block.attentions.0", "--n-per-class",
                                   "1", "--steps", "2", "--sampler", "ddim", "--out", str(out), "--no-progress"])
    assert code == 0, err
    assert list(np.load(out.with_suffix(".npz"))["nfe_per_sample"]) == [4, 6]


def test_cli_pag_at_w_0_needs_no_null_label(capsys, unet_pipeline, tmp_path):
    out = tmp_path / "grid.png"  # no --null-label: the UNet has none, and PAG alone (w = 0) evaluates no null rows
    code, _, err = run_cli(capsys, ["sample", "--diffusers", str(unet_pipeline), "--w", "0", "--guidance",
                                   "skip-layer", "--n-per-class", "1", "--steps", "2", "--sampler", "ddim", "--out",
                                   str(out), "--no-progress"])
    assert code == 0, err
    assert list(np.load(out.with_suffix(".npz"))["nfe_per_sample"]) == [4]


def test_cli_an_unknown_diffusers_layer_lists_the_available_ones(capsys, unet_pipeline, tmp_path):
    assert_usage_error(capsys, ["sample", "--diffusers", str(unet_pipeline), "--null-label", "10", "--guidance",
                                "pag", "--pag-layers", "mid.0", "--out", str(tmp_path / "x.png")],
                       "no layer 'mid.0' to perturb with attention-identity; available: down_blocks.1.attentions.0")
    assert not list(tmp_path.iterdir())
