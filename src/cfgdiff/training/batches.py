"""A resumable stream of training batches over a ``cfgdiff.data.Dataset``.

The stream is a pure function of (seed, position): global position e (the e-th example drawn since the run
began) falls in epoch e // N at place e % N, and each epoch's order is a permutation drawn from a generator
seeded by (seed, epoch) alone, with a horizontal-flip coin per place drawn after it (only used when flips are
on). So the whole state of the stream is one counter, ``consumed``, stored in the checkpoint; a resumed run,
a run with DataLoader workers and a run split over processes all see the very same examples.

One optimizer step consumes the GLOBAL batch, positions [c, c + B). With R processes and K accumulation
micro-batches, rank r's m-th micro-batch is positions c + (m·R + r)·b + [0, b), b = B / (R·K): the ranks
shard one global permutation (a distributed sampler), and the union over ranks and micro-batches is the same
global batch whatever R and K are.

Two paths give identical batches (a test checks it):

* in memory: ``dataset.stored`` moves to the training device once (uint8, 4× smaller than float) and is
  indexed there;
* streaming: a ``torch.utils.data.DataLoader`` (optionally with worker processes) gathers the stored rows of
  each micro-batch, e.g. from a memory map, and the main process moves them to the device.

Either way the rows are converted on the device with ``dataset.to_x`` and then flipped.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import torch

from cfgdiff.training.losses import Batch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for (seed, *keys), e.g. (seed, "rank", r) or (seed, "data", epoch): numpy's SeedSequence
    hashes the tuple, so nearby keys give unrelated streams. Strings enter by their CRC-32."""
    words = [int(seed) & 0xFFFFFFFFFFFFFFFF]
    words += [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


class EpochOrder:
    """The permutation (and flip coins) of each epoch, from (seed, epoch); caches the last two epochs."""

    def __init__(self, n: int, seed: int, hflip: bool) -> None:
        self.n, self.seed, self.hflip = int(n), int(seed), bool(hflip)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "data", epoch))
            perm = torch.randperm(self.n, generator=generator)
            flips = torch.rand(self.n, generator=generator) < 0.5 if self.hflip else None
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = (perm, flips)
        return self._cache[epoch]

    def positions(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows (int64 [count]) and flips (bool [count], or None) of global positions [start, start + count)."""
        rows, flips = [], []
        pos, end = int(start), int(start) + int(count)
        while pos < end:
            epoch, place = divmod(pos, self.n)
            take = min(end - pos, self.n - place)
            perm, coins = self.epoch(epoch)
            rows.append(perm[place:place + take])
            if coins is not None:
                flips.append(coins[place:place + take])
            pos += take
        return torch.cat(rows), (torch.cat(flips) if flips else None)


class _MicroBatchSource(torch.utils.data.Dataset):
    """Map-style source for the DataLoader: item ``start`` is the micro-batch at global positions
    [start, start + size) as (stored rows, labels, flips) on the CPU."""

    def __init__(self, stored: torch.Tensor, labels: torch.Tensor, order: EpochOrder, size: int) -> None:
        self.stored, self.labels, self.order, self.size = stored, labels, order, size

    def __getitem__(self, start: int):
        rows, flips = self.order.positions(start, self.size)
        stored = self.stored[rows]
        if not isinstance(stored, torch.Tensor):
            stored = torch.as_tensor(np.asarray(stored))
        return stored, self.labels[rows], flips if flips is not None else torch.zeros(0, dtype=torch.bool)


class _Starts(torch.utils.data.Sampler):
    """The start positions of this rank's micro-batches, step after step, from ``consumed`` on (endless)."""

    def __init__(self, consumed: int, batch_size: int, micro: int, rank: int, world_size: int, size: int) -> None:
        self.consumed, self.batch_size, self.micro = consumed, batch_size, micro
        self.rank, self.world_size, self.size = rank, world_size, size

    def __iter__(self) -> Iterator[int]:
        c = self.consumed
        while True:
            for m in range(self.micro):
                yield c + (m * self.world_size + self.rank) * self.size
            c += self.batch_size


class BatchStream:
    """This process's micro-batches, step after step; its state is ``consumed`` (global examples drawn)."""

    def __init__(
        self,
        dataset,  # cfgdiff.data.Dataset
        *,
        batch_size: int,  # GLOBAL examples per optimizer step
        micro_batches: int = 1,  # K: gradient-accumulation micro-batches per step and process
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        hflip: bool = False,  # random horizontal flips (images only)
        device: torch.device | str = "cpu",
        loader: str = "auto",  # "memory", "streaming", or "auto" (streaming when the data is not in memory)
        workers: int = 0,  # DataLoader worker processes (streaming)
        channels_last: bool = False,
    ) -> None:
        per_step = world_size * micro_batches
        if batch_size % per_step:
            raise ValueError(f"the global batch size {batch_size} is not divisible by {world_size} process(es) × "
                             f"{micro_batches} accumulation step(s); choose a multiple of {per_step}")
        if hflip and not dataset.is_image:
            raise ValueError("random horizontal flips (--hflip) need image data")
        if loader not in ("auto", "memory", "streaming"):
            raise ValueError(f"unknown loader {loader!r}; choose from auto, memory, streaming")
        self.dataset = dataset
        self.batch_size, self.micro = int(batch_size), int(micro_batches)
        self.rank, self.world_size = int(rank), int(world_size)
        self.size = self.batch_size // per_step  # b, the micro-batch of one process
        self.device = torch.device(device)
        self.channels_last = channels_last and dataset.is_image
        self.order = EpochOrder(len(dataset), seed, hflip)
        self.streaming = loader == "streaming" or (loader == "auto" and not getattr(dataset, "in_memory", True))
        self.workers = int(workers)
        self.consumed = 0
        self._iterator: Iterator | None = None
        self._loader: torch.utils.data.DataLoader | None = None
        if not self.streaming:
            self._stored = torch.as_tensor(dataset.stored).to(self.device)
            self._labels = dataset.labels.to(self.device)

    # -- state -------------------------------------------------------------------------------------------------

    def state(self) -> int:
        return self.consumed

    def load_state(self, consumed: int) -> None:
        self.close()
        self.consumed = int(consumed)

    def close(self) -> None:
        """Stop the DataLoader's workers (a new iterator starts from ``consumed`` when needed)."""
        self._iterator = None
        self._loader = None

    # -- batches -----------------------------------------------------------------------------------------------

    def starts(self) -> list[int]:
        """Start positions of this rank's micro-batches of the next step."""
        c = self.consumed
        return [c + (m * self.world_size + self.rank) * self.size for m in range(self.micro)]

    def next_step(self) -> list[Batch]:
        """The K micro-batches of this process for the next optimizer step; advances ``consumed`` by B."""
        if self.streaming:
            if self._iterator is None:
                self._iterator = iter(self._make_loader())
            micro = [self._finish(*next(self._iterator)) for _ in range(self.micro)]
        else:
            micro = []
            for start in self.starts():
                rows, flips = self.order.positions(start, self.size)
                rows_dev = rows.to(self.device)
                micro.append(self._finish(self._stored[rows_dev], self._labels[rows_dev], flips))
        self.consumed += self.batch_size
        return micro

    def _make_loader(self) -> torch.utils.data.DataLoader:
        source = _MicroBatchSource(self.dataset.stored, self.dataset.labels, self.order, self.size)
        sampler = _Starts(self.consumed, self.batch_size, self.micro, self.rank, self.world_size, self.size)
        self._loader = torch.utils.data.DataLoader(
            source, batch_size=None, sampler=sampler, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None,
        )
        return self._loader

    def _finish(self, stored: torch.Tensor, labels: torch.Tensor, flips: torch.Tensor | None) -> Batch:
        """Stored rows -> model inputs on the device: to_x, then the flips."""
        non_blocking = self.device.type == "cuda"
        x = self.dataset.to_x(stored.to(self.device, non_blocking=non_blocking))
        if flips is not None and flips.numel():
            flips = flips.to(self.device, non_blocking=non_blocking)
            x = torch.where(flips.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x=x, labels=labels.to(self.device, non_blocking=non_blocking))
