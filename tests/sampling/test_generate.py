"""Chunked generation: same seed, same samples whatever the chunk size; network options; NFE counting."""

import pytest
import torch

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.guidance import guidance_interval_sigma
from cfgdiff.guidance.counting import CountingEpsFn
from cfgdiff.models import UNet
from cfgdiff.sampling.generate import (
    DEFAULT_BATCH_SIZE,
    PreparedEpsFn,
    generate_samples,
    prepare_eps_fn,
    sample_generators,
    sample_seed,
)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = UNet(image_shape=(1, 8, 8), num_classes=3, base_channels=8, channel_mults=(1, 2), groups=4).eval()
    with torch.no_grad():  # the zero-initialised output conv would make every ε̂ zero
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.data_shape = (1, 8, 8)
    return net


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m", "heun"])
def test_same_seed_same_samples_whatever_the_chunk_size(gm, sampler):
    labels = torch.arange(3).repeat(5)  # 15 samples: chunks of 1, 4 (uneven) and all
    runs = [generate_samples(gm, labels, w=1.5, sampler=sampler, steps=8, batch_size=b, seed=123,
                             dtype=torch.float64) for b in (1, 4, 15, 64)]
    for x in runs[1:]:
        torch.testing.assert_close(x, runs[0], rtol=0, atol=0)
    other = generate_samples(gm, labels, w=1.5, sampler=sampler, steps=8, batch_size=4, seed=124,
                             dtype=torch.float64)
    assert not torch.equal(other, runs[0])


def test_generator_seed_gives_the_same_run_whatever_the_chunk_size(gm):
    labels = torch.arange(3).repeat(4)
    a = generate_samples(gm, labels, sampler="dpmpp_2m_sde", steps=6, batch_size=5,
                         generator=torch.Generator().manual_seed(9))
    b = generate_samples(gm, labels, sampler="dpmpp_2m_sde", steps=6, batch_size=12,
                         generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # sample i does not depend on how many samples follow it
    head = generate_samples(gm, labels[:5], sampler="dpmpp_2m_sde", steps=6, batch_size=2,
                            generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(head, a[:5], rtol=0, atol=0)


def test_unet_chunks_agree(unet):
    """A U-Net's rows are independent (GroupNorm per row); kernels may differ by batch size in the last bits."""
    labels = torch.arange(3).repeat(3)
    kw = dict(w=2.0, sampler="dpmpp_2m_sde", steps=5, seed=0, clip_x=True)
    with torch.no_grad():
        a = generate_samples(unet, labels, batch_size=2, **kw)
        b = generate_samples(unet, labels, batch_size=9, **kw)
    assert a.shape == (9, 1, 8, 8)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sample_seeds_are_distinct_and_stable():
    seeds = [sample_seed(0, i) for i in range(1000)] + [sample_seed(1, i) for i in range(1000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**64 for s in seeds)
    g1, g2 = sample_generators(5, 10, 12)
    assert g1.initial_seed() == sample_seed(5, 10) and g2.initial_seed() == sample_seed(5, 11)


def test_nfe_is_counted_through_generate(gm):
    """Chunks of B rows: every unguided step one call of B rows; the interval halves the rows it skips."""
    labels = torch.arange(3).repeat(4)  # 12 samples, chunks of 5, 5, 2
    counted = CountingEpsFn(gm)
    generate_samples(counted, labels, w=2.0, sampler="dpmpp_2m", steps=7, batch_size=5, seed=0)
    assert counted.calls == 3 * 7 and counted.rows == 2 * 12 * 7
    counted.reset()
    generate_samples(counted, labels, w=guidance_interval_sigma(2.0, sigma_lo=0.0, sigma_hi=0.0 + 1e-300),
                     sampler="dpmpp_2m", steps=7, batch_size=5, seed=0)
    assert counted.rows == 12 * 7  # an interval that contains no step: conditional calls only


def test_network_options_on_cpu(unet):
    labels = torch.tensor([0, 1, 2])
    kw = dict(w=1.0, sampler="dpmpp_2m", steps=4, seed=0, clip_x=True)
    assert prepare_eps_fn(unet) is unet
    with torch.no_grad():
        plain = generate_samples(unet, labels, **kw)
        last = generate_samples(unet, labels, channels_last=True, **kw)
        compiled = generate_samples(unet, labels, compile_network="eager", **kw)
        bf16 = generate_samples(unet, labels, autocast=True, **kw)
    unet.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(last, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled, plain, rtol=1e-5, atol=1e-5)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert (bf16 - plain).abs().mean() < 0.1  # bf16 network, float32 solver: close, not equal
    prepared = prepare_eps_fn(unet, autocast=True)
    assert isinstance(prepared, PreparedEpsFn) and prepared.num_classes == 3
    with pytest.raises(ValueError):
        prepare_eps_fn(GaussianMixture.three_gaussians(), compile_network=True)


def test_validation(gm):
    assert DEFAULT_BATCH_SIZE >= 1
    with pytest.raises(ValueError):
        generate_samples(gm, torch.tensor([0]), sampler="nope")
    with pytest.raises(ValueError):
        generate_samples(gm, torch.tensor([0]), batch_size=0)


def test_default_chunk_by_image_size_and_device():
    from cfgdiff.models.presets import DEFAULT_SAMPLING_CHUNK, default_chunk

    assert default_chunk((1, 8, 8)) == default_chunk((2,)) == 256  # small images and vectors: bigger chunks
    assert default_chunk((1, 28, 28)) == default_chunk((3, 32, 32)) == DEFAULT_SAMPLING_CHUNK
    assert default_chunk((1, 28, 28), "cuda") == default_chunk((1, 28, 28), "cuda:1") == 256
