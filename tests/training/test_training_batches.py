"""The resumable batch stream: a pure function of (seed, position); memory and DataLoader paths agree."""

import pytest
import torch

from cfgdiff.training.batches import BatchStream, EpochOrder, derive_seed
from tests.training_support import image_dataset


def _draw(stream, steps):
    return [[(b.x.clone(), b.labels.clone()) for b in stream.next_step()] for _ in range(steps)]


def _same(a, b):
    return all(torch.equal(x1, x2) and torch.equal(c1, c2)
               for s1, s2 in zip(a, b, strict=True) for (x1, c1), (x2, c2) in zip(s1, s2, strict=True))


def test_every_epoch_is_a_permutation_and_epochs_differ():
    order = EpochOrder(10, seed=3, hflip=True)
    rows, flips = order.positions(0, 30)  # three epochs
    for e in range(3):
        assert sorted(rows[10 * e:10 * e + 10].tolist()) == list(range(10))
    assert not torch.equal(rows[:10], rows[10:20])
    assert flips.dtype == torch.bool and 0 < int(flips.sum()) < 30
    again, again_flips = EpochOrder(10, seed=3, hflip=True).positions(7, 9)  # any window, a fresh object
    assert torch.equal(again, rows[7:16]) and torch.equal(again_flips, flips[7:16])
    assert derive_seed(0, "rank", 0) != derive_seed(0, "rank", 1) != derive_seed(1, "rank", 1)


@pytest.mark.parametrize("hflip", [False, True])
def test_memory_and_streaming_paths_give_identical_batches(hflip):
    data = image_dataset(23, hflip=hflip)
    kwargs = dict(batch_size=8, seed=5, hflip=hflip)
    memory = _draw(BatchStream(data, loader="memory", **kwargs), 7)  # 56 examples: crosses two epoch ends
    streaming = _draw(BatchStream(data, loader="streaming", workers=0, **kwargs), 7)
    with_workers = _draw(BatchStream(data, loader="streaming", workers=2, **kwargs), 7)
    assert _same(memory, streaming) and _same(memory, with_workers)
    assert memory[0][0][0].dtype == torch.float32 and memory[0][0][0].abs().max() <= 1.0


def test_flips_mirror_exactly_the_rows_the_coins_choose():
    data = image_dataset(12)
    stream = BatchStream(data, batch_size=12, seed=1, hflip=True, loader="memory")
    batch = stream.next_step()[0]
    rows, flips = stream.order.positions(0, 12)
    x = data.to_x(data.stored[rows])
    torch.testing.assert_close(batch.x, torch.where(flips[:, None, None, None], x.flip(-1), x), rtol=0, atol=0)
    assert torch.equal(batch.labels, data.labels[rows])


def test_auto_loader_streams_data_that_is_not_in_memory():
    assert BatchStream(image_dataset(8, in_memory=False), batch_size=4, loader="auto").streaming
    assert not BatchStream(image_dataset(8), batch_size=4, loader="auto").streaming


def test_ranks_and_micro_batches_shard_one_global_batch():
    """Union over R ranks and K micro-batches of step s = the one-process batch of step s, in order m·R + r."""
    data = image_dataset(30)
    single = _draw(BatchStream(data, batch_size=12, seed=2, loader="memory"), 4)
    for world, micro in ((2, 1), (2, 3), (1, 2), (3, 2)):
        per_rank = [_draw(BatchStream(data, batch_size=12, micro_batches=micro, rank=r, world_size=world, seed=2,
                                      loader="memory"), 4) for r in range(world)]
        for step in range(4):
            parts = [per_rank[r][step][m] for m in range(micro) for r in range(world)]
            x = torch.cat([p[0] for p in parts])
            assert torch.equal(x, single[step][0][0]), (world, micro, step)


def test_resume_from_the_counter_continues_the_same_stream():
    data = image_dataset(17, hflip=True)
    straight = _draw(BatchStream(data, batch_size=5, seed=4, hflip=True, loader="streaming", workers=1), 9)
    resumed = BatchStream(data, batch_size=5, seed=4, hflip=True, loader="streaming", workers=1)
    first = _draw(resumed, 4)
    resumed.load_state(resumed.state())  # a restart from the checkpointed counter
    assert _same(straight, first + _draw(resumed, 5))


@pytest.mark.parametrize("kwargs, needle", [
    (dict(batch_size=10, world_size=3), "not divisible"),
    (dict(batch_size=8, micro_batches=3), "not divisible"),
    (dict(batch_size=8, loader="disk"), "unknown loader"),
])
def test_bad_stream_options(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        BatchStream(image_dataset(8), **kwargs)


def test_flips_need_images():
    from cfgdiff.data import load_dataset

    with pytest.raises(ValueError, match="image"):
        BatchStream(load_dataset("gmm2d"), batch_size=4, hflip=True)
