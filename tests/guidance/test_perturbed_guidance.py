"""PAG and skip-layer guidance: ε̃ = ε_c + w (ε_c - ε_u) + s (ε_c - ε_p), the perturbed rows switched per row in the
same network call. The formula against a network with a known ε_p (the exact mixture), the per-row switch inside
cfgdiff's U-Net against the perturbation computed by hand, the neutral settings against plain CFG, the rows and
calls of a step, and the one-line refusals."""

import pytest
import torch
import torch.nn.functional as F

from cfgdiff.core.perturbation import Perturbation, PerturbationError, active_perturbation, perturbing
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.guidance import GUIDANCE_METHODS, autoguidance, cfg, make_guide, pag, skip_layer
from cfgdiff.guidance.counting import CountingEpsFn
from cfgdiff.models.unet import UNet
from cfgdiff.sampling.pipeline import GuidedRun
from tests.helpers import PerturbableNet

METHODS = [name for name, spec in GUIDANCE_METHODS.items() if spec.perturbation is not None]


@pytest.fixture(scope="module")
def toy(gm):
    """The mixture whose perturbed rows are a wider mixture's: ε_p is known exactly."""
    return PerturbableNet(gm, GaussianMixture(gm.means, 1.5 * gm.stds))


@pytest.fixture(scope="module")
def unet():
    """A small random U-Net (attention at its lowest level and in the middle block) with a non-zero output conv."""
    torch.manual_seed(0)
    net = UNet((1, 8, 8), 3, base_channels=8, channel_mults=(1, 2), emb_dim=32, groups=4, num_heads=2).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net.requires_grad_(False)


def _inputs(batch=4, shape=(2,), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, *shape, generator=g, dtype=dtype)
    return z, torch.linspace(-2.0, 3.0, batch, dtype=dtype), torch.arange(batch) % 3


# -- the formula --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("w", [0.0, 1.5, -0.5])
def test_the_guided_eps_is_cfg_plus_s_times_the_perturbed_difference(toy, gm, name, w):
    z, logsnr, labels = _inputs()
    weak = toy.weak
    got = make_guide(name, scale=2.0)(toy, w)(z, logsnr, labels)
    expected = cfg(gm, w)(z, logsnr, labels) + 2.0 * (gm(z, logsnr, labels) - weak(z, logsnr, labels))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_at_w_0_it_is_autoguidance_by_the_perturbed_network(toy, gm):
    z, logsnr, labels = _inputs()
    got = pag(toy, 0.0, scale=1.7)(z, logsnr, labels)
    torch.testing.assert_close(got, autoguidance(gm, 1.7, guide=toy.weak)(z, logsnr, labels), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("w", [0.0, 2.0])
@pytest.mark.parametrize("neutral", [{"scale": 0.0}, {"layers": ()}])
def test_the_neutral_settings_are_plain_cfg_exactly_on_the_unet(unet, name, w, neutral):
    z, logsnr, labels = _inputs(shape=(1, 8, 8), dtype=torch.float32)
    counted = CountingEpsFn(unet)
    got = make_guide(name, **neutral)(counted, w)(z, logsnr, labels)
    assert torch.equal(got, cfg(unet, w)(z, logsnr, labels))
    assert counted.batch_sizes == [4 if w == 0 else 8]  # the same call plain CFG makes


# -- the per-row switch inside the U-Net --------------------------------------------------------------------


def test_identity_attention_rows_output_their_value_projection(unet):
    block = unet.mid[0].attn
    x = torch.randn(3, block.proj.in_channels, 2, 2)
    rows = torch.tensor([False, True, False])
    got = block(x, rows)
    b, c, h, w = x.shape
    v = block.qkv(block.norm(x)).reshape(b, 3, c, h, w)[:, 2]  # [B, C, H, W], V of every head
    torch.testing.assert_close(got[1], (x + block.proj(v))[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[[0, 2]], block(x)[[0, 2]], rtol=1e-5, atol=1e-6)  # the others untouched


def test_softmax_of_qk_replaced_by_the_identity_is_attention_over_one_position_each(unet):
    # the identity map lets every position attend to itself alone: the same as attention with a diagonal mask
    block = unet.mid[0].attn
    x = torch.randn(2, block.proj.in_channels, 2, 2)
    b, c, h, w = x.shape
    qkv = block.qkv(block.norm(x)).reshape(b, 3, block.num_heads, c // block.num_heads, h * w)
    q, k, v = qkv.transpose(-1, -2).unbind(dim=1)
    diagonal = torch.eye(h * w, dtype=torch.bool)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=diagonal).transpose(-1, -2).reshape(b, c, h, w)
    torch.testing.assert_close(block(x, torch.ones(2, dtype=torch.bool)), x + block.proj(out), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["attention-identity", "skip"])
def test_a_perturbed_row_in_a_batch_is_that_row_perturbed_alone(unet, kind):
    z, logsnr, labels = _inputs(batch=4, shape=(1, 8, 8), dtype=torch.float32)
    perturbation = Perturbation(kind, ("mid.0",))
    rows = torch.tensor([False, True, False, True])
    with perturbing(rows, perturbation):
        batched = unet(z, logsnr, labels)
    plain = unet(z, logsnr, labels)
    for i in range(4):
        if rows[i]:
            with perturbing(torch.ones(1, dtype=torch.bool), perturbation):
                alone = unet(z[i:i + 1], logsnr[i:i + 1], labels[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(batched[i], plain[i], atol=1e-4)  # the perturbation changes the row
        else:
            torch.testing.assert_close(batched[i], plain[i], rtol=1e-5, atol=1e-6)


def test_skipping_a_block_is_the_network_without_it(unet):
    z, logsnr, labels = _inputs(batch=2, shape=(1, 8, 8), dtype=torch.float32)
    with perturbing(torch.ones(2, dtype=torch.bool), Perturbation("skip", ("mid.1",))):
        skipped = unet(z, logsnr, labels)
    block = unet.mid[1]
    unet.mid[1] = _Identity()
    try:
        expected = unet(z, logsnr, labels)
    finally:
        unet.mid[1] = block
    torch.testing.assert_close(skipped, expected, rtol=1e-5, atol=1e-6)


class _Identity(torch.nn.Module):
    def forward(self, x, emb, **_):
        return x


def test_the_unet_names_its_layers_and_defaults_to_the_middle_block(unet):
    assert unet.perturbable_layers("attention-identity") == ("down.2", "mid.0", "up.0", "up.1")
    assert unet.perturbable_layers("skip") == ("down.0", "mid.0", "mid.1")  # same input and output shapes
    assert unet.default_perturbed_layers("attention-identity") == ("mid.0",)
    assert unet.default_perturbed_layers("skip") == ("mid.0",)


def test_the_switch_is_off_outside_the_block_and_refuses_another_row_count():
    with perturbing(torch.tensor([True, False]), Perturbation("skip", ("x",))):
        assert active_perturbation(2) is not None
        with pytest.raises(ValueError, match="2 rows, the network call 3"):
            active_perturbation(3)
    assert active_perturbation(2) is None
    with perturbing(torch.zeros(2, dtype=torch.bool), Perturbation("skip", ("x",))):
        assert active_perturbation(2) is None  # no row switched on: the plain network


# -- one call per step ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_a_step_is_one_call_of_3b_rows_and_2b_at_w_0(unet, name):
    labels = torch.arange(6) % 3
    run = GuidedRun(unet, method=name, params={"scale": 1.0}, sampler="dpmpp_2m", steps=5, batch_size=6)
    for w, copies in ((2.0, 3), (0.0, 2)):
        run.counter.reset()
        x = run.samples(labels, w, seed=0)
        assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all()
        assert run.denoiser_calls() == 5  # one network call per step
        assert run.counter.counters["denoiser"][0].batch_sizes == [copies * 6] * 5


def test_the_python_api_samples_with_named_layers_and_neutral_is_cfg(unet):
    labels = torch.arange(3)
    kw = {"sampler": "ddim", "steps": 4}
    plain = GuidedRun(unet, method="cfg", **kw).samples(labels, 1.0, seed=3)
    neutral = GuidedRun(unet, method="pag", params={"scale": 0.0}, **kw).samples(labels, 1.0, seed=3)
    assert torch.equal(neutral, plain)
    guided = GuidedRun(unet, method="skip-layer", params={"scale": 1.0, "layers": ["mid.0", "mid.1"]},
                       **kw).samples(labels, 1.0, seed=3)
    assert not torch.allclose(guided, plain)


# -- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "params", "match"), [
    (pag, {"layers": ["nope"]}, "no layer 'nope' to perturb with attention-identity; available: down.2, mid.0"),
    (skip_layer, {"layers": ["up.0"]}, "available: down.0, mid.0, mid.1"),  # up.0 changes the channel count
    (pag, {"scale": -1.0}, "must be >= 0"),
    (skip_layer, {"scale": float("nan")}, "finite"),
])
def test_bad_parameters_are_one_line_errors(unet, build, params, match):
    with pytest.raises(ValueError, match=match) as info:
        build(unet, 1.0, **params)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", METHODS)
def test_a_network_without_the_switch_is_refused(gm, name):
    with pytest.raises(PerturbationError, match=f"GaussianMixture cannot perturb its layers.*{name} needs"):
        make_guide(name)(CountingEpsFn(gm), 1.0)
