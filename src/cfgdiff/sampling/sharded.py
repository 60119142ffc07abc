"""Sampling and evaluation split across torchrun's processes, with the one-process result.

    torchrun --nproc_per_node N -m cfgdiff sample RUN_DIR ...
    torchrun --nproc_per_node N -m cfgdiff eval RUN_DIR ...

What is split: the chunks of a guided run (``cfgdiff.sampling.pipeline.GuidedRun.iter_samples``, over the one chunk
loop ``cfgdiff.sampling.generate.iter_chunks``). One process samples its N labels in chunks of ``batch_size`` rows,
chunk j holding samples [j·B, (j+1)·B). With W processes, rank r samples the chunks j ≡ r (mod W) (a strided split
of whole chunks: round k runs chunks kW, ..., kW + W - 1 side by side). A chunk keeps its rows, its batch shape and
its per-sample noise streams (``sample_seed(seed, i)``), so it is the one-process chunk bit for bit: the same
kernels run on the same shapes. After each round rank 0 gathers the W chunks (a padded ``torch.distributed.gather``
of tensors, nothing pickled) and yields them in order, so rank 0 sees exactly the one-process chunks in the
one-process order (``gather_chunks``), and whatever consumes them (the grid and .npz of ``cfgdiff sample``; FID,
IS, their bootstrap spreads, memorisation and the 2-D metrics of ``cfgdiff eval``) computes the one-process result,
once, on rank 0. The other ranks yield nothing: they sample, send, and neither write nor print. Rank 0 holds one
round (W chunks) at a time, so memory stays flat in N as in one process.

A rank runs whole chunks: with fewer chunks than processes (N < W·B) some ranks idle; a smaller ``batch_size``
spreads the work (the samples do not depend on it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeGuard, TypeVar

import torch
import torch.distributed as torch_dist

from cfgdiff.runtime.distributed import DistContext, init_distributed, local_device

__all__ = ["gather_chunks", "init_sampling", "main_only", "sampling_group", "sum_over_ranks"]

T = TypeVar("T")

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64)
_MAX_DIMS = 8  # a chunk is [rows, *sample_shape]; the header has room for this many dimensions


def init_sampling(device: str) -> tuple[DistContext, str]:
    """(this process's place in torchrun's group, its device): joins the group when torchrun started the process
    (WORLD_SIZE > 1: gloo on CPU, NCCL on CUDA), else a single process; a bare ``cuda`` becomes
    ``cuda:LOCAL_RANK``."""
    dist = init_distributed(device)
    return dist, (str(local_device(device, dist.local_rank)) if dist.enabled else device)


@contextlib.contextmanager
def sampling_group(device: str) -> Iterator[tuple[DistContext, str]]:
    """``init_sampling(device)`` for the ``with`` block, leaving the group at its end (also on an error)."""
    dist, device = init_sampling(device)
    try:
        yield dist, device
    finally:
        dist.shutdown()


def _sharded(dist: DistContext | None) -> TypeGuard[DistContext]:
    return dist is not None and dist.enabled


def _comm_device() -> torch.device:
    """Where collectives take their tensors: the current CUDA device under NCCL, else the CPU."""
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(count: int, dist: DistContext | None) -> int:
    """The sum of ``count`` over all ranks (``count`` itself in one process). Every rank must call it."""
    if not _sharded(dist):
        return int(count)
    total = torch.tensor([int(count)], dtype=torch.int64, device=_comm_device())
    torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
    return int(total.item())


def main_only(fn: Callable[[], T], dist: DistContext | None) -> tuple[T | None, bool]:
    """Run ``fn`` on rank 0 alone (in one process: run it) and let every rank know whether it succeeded, so that
    no rank waits for ever on one that stopped. Rank 0 gets (``fn()``, True), or re-raises ``fn``'s error once the
    others know; the other ranks get (None, True), or (None, False) when rank 0 failed: they should then stop
    quietly, rank 0 reports the error. Every rank must call it."""
    if not _sharded(dist):
        return fn(), True
    result, error = None, None
    if dist.is_main:
        try:
            result = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised below, after the other ranks know
            error = err
    failed = sum_over_ranks(int(error is not None), dist)
    if error is not None:
        raise error
    return result, failed == 0


def _header(chunk: torch.Tensor | None) -> torch.Tensor:
    """[dtype code, ndim, *shape, -1 padding] of a chunk, all -1 for no chunk."""
    header = torch.full((2 + _MAX_DIMS,), -1, dtype=torch.int64)
    if chunk is not None:
        if chunk.dtype not in _DTYPES or not 1 <= chunk.ndim <= _MAX_DIMS:
            raise ValueError(f"cannot gather a chunk of dtype {chunk.dtype} and shape {tuple(chunk.shape)}")
        header[0], header[1] = _DTYPES.index(chunk.dtype), chunk.ndim
        header[2:2 + chunk.ndim] = torch.tensor(chunk.shape, dtype=torch.int64)
    return header


def _gather_to_main(chunk: torch.Tensor | None, dist: DistContext) -> list[torch.Tensor | None]:
    """Rank 0: every rank's chunk in rank order (None where a rank had none); other ranks: []. Every rank calls
    it; rank 0 always has a chunk (it runs the first chunk of each round).

    Chunks differ in rows only (the last chunk may be shorter), so each is padded to the longest, gathered with
    ``torch.distributed.gather`` and cut back to its rows: a copy, bit for bit."""
    device = _comm_device()
    headers = [torch.empty(2 + _MAX_DIMS, dtype=torch.int64, device=device) for _ in range(dist.world_size)]
    torch_dist.all_gather(headers, _header(chunk).to(device))
    headers = [h.cpu() for h in headers]
    present = [h for h in headers if h[0] >= 0]
    ndim = int(present[0][1])
    dtype, sample_shape = _DTYPES[int(present[0][0])], tuple(int(d) for d in present[0][3:2 + ndim])
    for h in present:
        if int(h[0]) != int(present[0][0]) or int(h[1]) != ndim or tuple(h[3:2 + ndim].tolist()) != sample_shape:
            raise RuntimeError(f"ranks sampled chunks of different shapes or dtypes: {[h.tolist() for h in present]}")
    rows = max(int(h[2]) for h in present)
    padded = torch.zeros((rows, *sample_shape), dtype=dtype, device=device)
    if chunk is not None:
        padded[:chunk.shape[0]] = chunk.to(device)
    gathered = [torch.empty_like(padded) for _ in range(dist.world_size)] if dist.is_main else None
    torch_dist.gather(padded, gathered, dst=0)
    if gathered is None:  # not rank 0: it only sends
        return []
    return [part[:int(h[2])].cpu() if h[0] >= 0 else None for part, h in zip(gathered, headers, strict=True)]


def gather_chunks(local: Iterator[torch.Tensor], *, num_chunks: int, dist: DistContext) -> Iterator[torch.Tensor]:
    """Chunks 0, ..., num_chunks - 1 in order on rank 0, where rank r's ``local`` yields chunks r, r + W, r + 2W,
    ... (its k-th chunk is chunk kW + r); nothing on the other ranks, which only send theirs. Every rank must
    iterate it to the end (each round is a collective)."""
    for first in range(0, num_chunks, dist.world_size):
        mine = next(local) if first + dist.rank < num_chunks else None
        for part in _gather_to_main(mine, dist):
            if part is not None:
                yield part
