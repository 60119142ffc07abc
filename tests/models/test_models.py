"""Checks of the denoiser contract `eps = model(z, logsnr, labels)` shared by every network.

The same checks run over every (architecture, data shape) pair in MODEL_CASES, with small widths so the
whole file runs in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from cfgdiff.models import MLPDenoiser, UNet, build_model
from cfgdiff.models.embeddings import ConditioningEmbedding, LogSNREmbedding

NUM_CLASSES = 3

# Small widths; (1, 28, 28) with three levels exercises the odd 14 -> 7 -> 14 round trip.
SMALL_UNET = dict(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, num_heads=2, groups=4)

MODEL_CASES: dict[str, Callable[[], nn.Module]] = {
    "unet-1x8x8": lambda: UNet((1, 8, 8), NUM_CLASSES, **SMALL_UNET),
    "unet-1x28x28": lambda: UNet((1, 28, 28), NUM_CLASSES, **SMALL_UNET),
    "unet-3x32x32": lambda: UNet((3, 32, 32), NUM_CLASSES, **SMALL_UNET),
    "unet-1x8x8-attn-all-levels": lambda: UNet(
        (1, 8, 8), NUM_CLASSES, **{**SMALL_UNET, "num_res_blocks": 2}, attn_levels=(0, 1, 2)
    ),
    "mlp-2": lambda: MLPDenoiser(2, NUM_CLASSES, hidden=32, depth=2, emb_dim=16),
}


def make_model(case: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODEL_CASES[case]().eval()


def make_inputs(model: nn.Module, batch: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z ~ N(0, I) [B, *data_shape], logsnr ~ U(-20, 20) [B], labels covering 0..K (K = null) [B]."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, *model.data_shape, generator=gen)
    logsnr = torch.rand(batch, generator=gen) * 40 - 20
    labels = torch.arange(batch) % (model.num_classes + 1)
    return z, logsnr, labels


def last_layer(model: nn.Module) -> nn.Module:
    return model.conv_out if isinstance(model, UNet) else model.fc_out


def perturb_last_layer(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Move the zero-initialised output layer off zero, so the output depends on the rest of the net."""
    torch.manual_seed(123)
    layer = last_layer(model)
    with torch.no_grad():
        nn.init.normal_(layer.weight, std=std)
        nn.init.normal_(layer.bias, std=std)
    return model


cases = pytest.mark.parametrize("case", list(MODEL_CASES))


@cases
def test_output_shape_and_dtype_match_input(case: str) -> None:
    model = make_model(case)
    z, logsnr, labels = make_inputs(model)
    eps = model(z, logsnr, labels)
    assert eps.shape == z.shape and eps.dtype == z.dtype
    model64 = model.double()
    eps64 = model64(z.double(), logsnr.double(), labels)
    assert eps64.shape == z.shape and eps64.dtype == torch.float64


@cases
def test_zero_init_output_is_zero(case: str) -> None:
    model = make_model(case)
    z, logsnr, labels = make_inputs(model)
    assert torch.count_nonzero(model(z, logsnr, labels)) == 0


@cases
def test_model_attributes(case: str) -> None:
    model = make_model(case)
    assert model.num_classes == NUM_CLASSES
    assert isinstance(model.data_shape, tuple) and all(isinstance(s, int) for s in model.data_shape)


@cases
def test_null_label_accepted_and_out_of_range_rejected(case: str) -> None:
    model = make_model(case)
    z, logsnr, _ = make_inputs(model)
    null = torch.full((z.shape[0],), model.num_classes, dtype=torch.int64)
    assert torch.isfinite(model(z, logsnr, null)).all()
    with pytest.raises(IndexError):
        model(z, logsnr, null + 1)


@cases
def test_labels_change_the_output(case: str) -> None:
    model = perturb_last_layer(make_model(case))
    z, logsnr, _ = make_inputs(model)
    outs = [model(z, logsnr, torch.full((z.shape[0],), c)) for c in range(model.num_classes + 1)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j], atol=1e-6), (i, j)


@cases
def test_logsnr_changes_the_output(case: str) -> None:
    model = perturb_last_layer(make_model(case))
    z, _, labels = make_inputs(model)
    ones = torch.ones(z.shape[0])
    eps_a = model(z, -5.0 * ones, labels)
    eps_b = model(z, 5.0 * ones, labels)
    eps_c = model(z, 5.1 * ones, labels)  # a small change in λ is still seen
    assert not torch.allclose(eps_a, eps_b, atol=1e-6)
    assert not torch.allclose(eps_b, eps_c, atol=1e-6)


@cases
def test_scalar_logsnr_broadcasts(case: str) -> None:
    model = perturb_last_layer(make_model(case))
    z, _, labels = make_inputs(model)
    eps_scalar = model(z, torch.tensor(3.0), labels)
    eps_batch = model(z, torch.full((z.shape[0],), 3.0), labels)
    torch.testing.assert_close(eps_scalar, eps_batch, rtol=0, atol=0)


@cases
def test_build_model_round_trip(case: str) -> None:
    model = perturb_last_layer(make_model(case))
    config = json.loads(json.dumps(model.config()))  # must survive JSON
    assert config["arch"] in ("unet", "mlp")
    torch.manual_seed(999)  # different init, so equal outputs come from the loaded weights
    rebuilt = build_model(config).eval()
    assert type(rebuilt) is type(model)
    assert rebuilt.config() == model.config()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    z, logsnr, labels = make_inputs(model)
    torch.testing.assert_close(rebuilt(z, logsnr, labels), model(z, logsnr, labels), rtol=0, atol=0)


def test_build_model_unknown_arch() -> None:
    with pytest.raises(ValueError, match="unknown model arch"):
        build_model({"arch": "transformer", "dim": 2, "num_classes": 3})
    with pytest.raises(ValueError, match="unknown model arch"):
        build_model({"dim": 2, "num_classes": 3})


@cases
def test_gradients_reach_every_parameter(case: str) -> None:
    model = perturb_last_layer(make_model(case)).train()
    z, logsnr, labels = make_inputs(model, batch=8)
    model(z, logsnr, labels).square().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@cases
def test_batch_rows_are_independent(case: str) -> None:
    model = perturb_last_layer(make_model(case))
    z, logsnr, labels = make_inputs(model, batch=6)
    eps = model(z, logsnr, labels)
    z2, logsnr2, labels2 = make_inputs(model, batch=6, seed=7)
    # keep row 0, change every other row (data, λ and label)
    z2[0], logsnr2[0], labels2[0] = z[0], logsnr[0], labels[0]
    labels2[1:] = (labels[1:] + 1) % (model.num_classes + 1)
    eps2 = model(z2, logsnr2, labels2)
    torch.testing.assert_close(eps2[0], eps[0], rtol=1e-5, atol=1e-6)
    # and row 0 alone gives the same answer as inside the batch
    eps_alone = model(z[:1], logsnr[:1], labels[:1])
    torch.testing.assert_close(eps_alone[0], eps[0], rtol=1e-4, atol=1e-5)  # other kernels at B = 1


def test_unet_channels_last_input_matches() -> None:
    model = perturb_last_layer(make_model("unet-1x28x28"))
    z, logsnr, labels = make_inputs(model)
    eps = model(z, logsnr, labels)
    eps_cl = model(z.contiguous(memory_format=torch.channels_last), logsnr, labels)
    torch.testing.assert_close(eps_cl, eps, rtol=1e-5, atol=1e-6)


def test_unet_default_attention_is_lowest_level_only() -> None:
    model = UNet((1, 8, 8), 10)
    assert model.attn_levels == (len(model.channel_mults) - 1,)
    assert model.config()["attn_levels"] == [len(model.channel_mults) - 1]


def test_unet_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="divisible by groups"):
        UNet((1, 8, 8), 10, base_channels=12, groups=8)
    with pytest.raises(ValueError, match="attn_levels"):
        UNet((1, 8, 8), 10, attn_levels=(5,))
    with pytest.raises(ValueError, match="image_shape"):
        UNet((8, 8), 10)


def test_logsnr_features_are_bounded_and_distinguish_lambda() -> None:
    emb = LogSNREmbedding(emb_dim=16, num_freqs=8)
    logsnr = torch.tensor([-20.0, -1.0, 0.0, 1.0, 20.0])
    feats = emb.features(logsnr)  # [5, 16]
    assert feats.shape == (5, 16)
    assert feats.abs().max() <= 1.0
    # sin² + cos² = 1 per frequency
    torch.testing.assert_close(feats[:, :8] ** 2 + feats[:, 8:] ** 2, torch.ones(5, 8))
    assert torch.cdist(feats, feats).add(torch.eye(5)).min() > 0.1


def test_conditioning_is_sum_of_logsnr_and_class_embeddings() -> None:
    torch.manual_seed(0)
    cond = ConditioningEmbedding(num_classes=4, emb_dim=8)
    logsnr = torch.tensor([0.5, -3.0])
    labels = torch.tensor([4, 1])  # 4 = null row
    expected = cond.logsnr_emb(logsnr) + cond.class_emb.table.weight[labels]
    torch.testing.assert_close(cond(logsnr, labels), expected)
    assert cond.class_emb.null_label == 4
    assert cond.class_emb.table.num_embeddings == 5
