"""Many guided samples in chunks: the loop shared by ``cfgdiff sample`` and evaluation.

``generate_samples`` runs a sampler from ``cfgdiff.samplers.SAMPLERS`` under a guidance wrapper over chunks of
``batch_size`` rows, so memory does not grow with the number of samples. Only this module and the CLI know
about chunks; the samplers see one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cfgdiff.contract import EpsFn, check_labels
from cfgdiff.guidance import GuidanceWeight, cfg
from cfgdiff.samplers import SAMPLERS

DEFAULT_BATCH_SIZE = 64  # rows per chunk on CPU, from the measurement in README "Chunk size"


def generate_samples(
    eps_fn: EpsFn,
    labels: torch.Tensor,
    *,
    w: GuidanceWeight = 0.0,
    sampler: str = "ancestral",
    steps: int = 128,
    batch_size: int = DEFAULT_BATCH_SIZE,
    generator: torch.Generator | None = None,
    data_shape: tuple[int, ...] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    guide: Callable[[EpsFn, GuidanceWeight], EpsFn] = cfg,
    on_chunk: Callable[[int], None] | None = None,
    **sampler_kwargs: Any,
) -> torch.Tensor:
    """x for every label: [N, *data_shape] on the CPU.

    ``guide(eps_fn, w)`` wraps the denoiser (classifier-free guidance by default); ``sampler_kwargs`` go to the
    sampler (``v_interp``, ``clip_x``, ``grid``, ...). Chunks draw from one ``generator`` in order.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    check_labels(labels, eps_fn.num_classes, allow_null=True)
    data_shape = tuple(data_shape if data_shape is not None else eps_fn.data_shape)
    sample_fn = SAMPLERS[sampler]
    guided = guide(eps_fn, w)
    out = []
    for start in range(0, labels.shape[0], batch_size):
        chunk = labels[start:start + batch_size].to(device)
        x = sample_fn(guided, (chunk.shape[0], *data_shape), chunk, steps=steps, generator=generator,
                      device=device, dtype=dtype, **sampler_kwargs)
        out.append(x.to("cpu"))
        if on_chunk is not None:
            on_chunk(chunk.shape[0])
    return torch.cat(out) if out else torch.empty(0, *data_shape)
