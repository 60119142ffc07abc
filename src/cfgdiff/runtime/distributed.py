"""Distributed training on PyTorch's own engine: torchrun sets the environment, we join its process group.

    torchrun --nproc_per_node N -m cfgdiff train ...                        # one machine, N processes
    torchrun --nnodes M --node_rank i --nproc_per_node N \\
             --rdzv_backend c10d --rdzv_endpoint HOST:PORT -m cfgdiff train ...  # M machines

torchrun exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``init_distributed`` reads them
and joins the group (``gloo`` on CPU, ``nccl`` on CUDA, each process on cuda:LOCAL_RANK). Without them (a
plain ``cfgdiff train``) it is a single process and nothing is initialised.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # this context initialised the process group (and destroys it in ``shutdown``)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints, logs and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        """Leave the group. On a normal exit the ranks first meet at a barrier, so no rank tears down its gloo
        connections while another still writes its last checkpoint (a rank that left early could abort with
        "terminate called without an active exception"); on an error path (an exception propagating) there is
        no barrier, since the other ranks may never reach it."""
        if not (self.owned and dist.is_initialized()):
            return
        if self.enabled and sys.exc_info()[0] is None:
            with contextlib.suppress(RuntimeError):  # a peer already gone: leave anyway
                dist.barrier()
        dist.destroy_process_group()


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when absent)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def init_distributed(device: str | torch.device) -> DistContext:
    """Join torchrun's process group if the environment describes one (WORLD_SIZE > 1), else a single process."""
    world_size = env_world_size()
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_device(device, local_rank))
    dist.init_process_group("nccl" if cuda else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, owned=True)


def local_device(device: str | torch.device, local_rank: int) -> torch.device:
    """The device of this process: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over processes, in place (a no-op for one process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_bytes(tensor: torch.Tensor, ctx: DistContext, device: torch.device) -> list[torch.Tensor]:
    """Every rank's uint8 tensor of one common size (e.g. a generator state), gathered on every rank."""
    if not ctx.enabled:
        return [tensor]
    local = tensor.to(device)
    parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]
