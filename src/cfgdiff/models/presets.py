"""Architecture and training presets chosen by the data's shape: ``preset_for(data_shape, size)``.

Four image families, by the shorter image side, each in three sizes (``small``, ``base``, ``large``), and one
for vector data. The U-Net recipes follow DDPM's CIFAR-10 network (Ho et al. 2020: widths 128·(1, 2, 2, 2), two
residual blocks per level, self-attention at 16×16, dropout 0.1, Adam 2e-4, batch 128, 5000 warm-up steps) and
ADM's (Dhariwal & Nichol 2021: attention at 32, 16 and 8, widths ·(1, 2, 3, 4) at 64×64), scaled down so that
``small`` trains on a CPU:

=========  =============  ==========================================================================
family     shorter side   resolution levels (sizes) and attention
=========  =============  ==========================================================================
8x8        ≤ 12           3 levels (8, 4, 2), attention at the lowest; the digits network is ``base``
28x28      13 … 30        3 levels (28, 14, 7); attention at 7 (small) or 14 and 7 (base, large)
32x32      31 … 48        small: 3 levels (32, 16, 8), attention at 8; base, large: 4 levels (32 … 4),
                          attention at 16, as DDPM
64x64      > 48           4 levels (64, 32, 16, 8); attention at 8 (small), 16 and 8 (base), 32, 16 and 8
                          (large, as ADM); one more level (width ×1) per doubling above 64, so the lowest
                          level stays at 8×8
vector     (D,)           the MLP of the 2-D testbed (``base`` is the gmm2d network)
=========  =============  ==========================================================================

Each preset is a dict of ``cfgdiff.training.TrainConfig`` fields: ``model`` (the ``build_model`` config, without
``image_shape``/``num_classes``, which come from the data) plus ``steps``, ``batch_size``, ``lr`` and
``warmup_steps`` where they differ from the TrainConfig defaults. Two presets are exactly the configurations
that existing runs used: 8x8 ``base`` = the digits defaults (0.72M parameters) and 28x28 ``small`` = the
1×28×28 defaults (0.72M; the Fashion-MNIST run). ``default_size`` picks ``small`` on a CPU (``base`` for 8x8,
whose base is the digits network) and ``base`` on an accelerator.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

SIZES = ("small", "base", "large")
FAMILIES = ("8x8", "28x28", "32x32", "64x64", "vector")

_UNET = {"arch": "unet"}

# family -> size -> preset (TrainConfig fields). Model dicts list only what differs from the UNet defaults
# (base_channels 16, channel_mults (1, 2, 4), num_res_blocks 1, attention at the lowest level, dropout 0), so
# the two presets that existing runs used are byte-for-byte their configs.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "8x8": {
        "small": {"steps": 4000, "batch_size": 128, "lr": 2e-3,
                  "model": {**_UNET, "base_channels": 8, "channel_mults": [1, 2, 4], "num_res_blocks": 1}},
        # the digits defaults (cfgdiff train --data digits): 0.72M parameters
        "base": {"steps": 4000, "batch_size": 128, "lr": 2e-3,
                 "model": {**_UNET, "base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1}},
        "large": {"steps": 8000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 500,
                  "model": {**_UNET, "base_channels": 32, "channel_mults": [1, 2, 4], "num_res_blocks": 2,
                            "dropout": 0.1}},
    },
    "28x28": {
        # the 1x28x28 defaults the Fashion-MNIST run trains with: 0.72M parameters
        "small": {"steps": 10000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 500,
                  "model": {**_UNET, "base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1}},
        "base": {"steps": 30000, "batch_size": 128, "lr": 5e-4, "warmup_steps": 1000,
                 "model": {**_UNET, "base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 2,
                           "attn_levels": [1, 2], "dropout": 0.1}},
        "large": {"steps": 100000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000,
                  "model": {**_UNET, "base_channels": 64, "channel_mults": [1, 2, 2], "num_res_blocks": 2,
                            "attn_levels": [1, 2], "dropout": 0.1}},
    },
    "32x32": {
        # the 28x28 small network with dropout: attention only at 8x8, so that it trains on a CPU
        "small": {"steps": 30000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 500,
                  "model": {**_UNET, "base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1,
                            "attn_levels": [2], "dropout": 0.1}},
        "base": {"steps": 200000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000,
                 "model": {**_UNET, "base_channels": 64, "channel_mults": [1, 2, 2, 2], "num_res_blocks": 2,
                           "attn_levels": [1], "dropout": 0.1}},
        # DDPM's CIFAR-10 network (Ho et al. 2020, appendix B)
        "large": {"steps": 800000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000,
                  "model": {**_UNET, "base_channels": 128, "channel_mults": [1, 2, 2, 2], "num_res_blocks": 2,
                            "attn_levels": [1], "dropout": 0.1}},
    },
    "64x64": {
        "small": {"steps": 50000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 500,
                  "model": {**_UNET, "base_channels": 16, "channel_mults": [1, 2, 2, 4], "num_res_blocks": 1,
                            "attn_levels": [3], "dropout": 0.1}},
        "base": {"steps": 300000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000,
                 "model": {**_UNET, "base_channels": 64, "channel_mults": [1, 2, 3, 4], "num_res_blocks": 2,
                           "attn_levels": [2, 3], "dropout": 0.1}},
        # ADM's ImageNet-64 layout (attention at 32, 16, 8) at two thirds of its width and depth
        "large": {"steps": 500000, "batch_size": 128, "lr": 1e-4, "warmup_steps": 5000,
                  "model": {**_UNET, "base_channels": 128, "channel_mults": [1, 2, 3, 4], "num_res_blocks": 2,
                            "attn_levels": [1, 2, 3], "dropout": 0.1}},
    },
    "vector": {
        "small": {"steps": 3000, "batch_size": 512, "lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.995,
                  "checkpoint_every": 1000, "model": {"arch": "mlp", "hidden": 64, "depth": 2}},
        # the gmm2d defaults
        "base": {"steps": 3000, "batch_size": 512, "lr": 1e-3, "warmup_steps": 100, "ema_decay": 0.995,
                 "checkpoint_every": 1000, "model": {"arch": "mlp", "hidden": 128, "depth": 3}},
        "large": {"steps": 6000, "batch_size": 512, "lr": 1e-3, "warmup_steps": 200, "ema_decay": 0.995,
                  "checkpoint_every": 1000, "model": {"arch": "mlp", "hidden": 256, "depth": 4}},
    },
}

# The shape each family is named for (used for the table's parameter counts and timings).
CANONICAL_SHAPES: dict[str, tuple[int, ...]] = {
    "8x8": (1, 8, 8), "28x28": (1, 28, 28), "32x32": (3, 32, 32), "64x64": (3, 64, 64), "vector": (2,),
}


def family_of(data_shape: Sequence[int]) -> str:
    """The preset family of a data shape: (D,) -> "vector"; (C, H, W) by the shorter side (see the table)."""
    shape = tuple(int(s) for s in data_shape)
    if len(shape) == 1:
        return "vector"
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"no preset for data of shape {list(shape)}; expected (D,) or (C, H, W)")
    side = min(shape[1:])
    return "8x8" if side <= 12 else "28x28" if side <= 30 else "32x32" if side <= 48 else "64x64"


def default_size(data_shape: Sequence[int], device: str = "cpu") -> str:
    """``small`` on a CPU (``base`` for 8x8 and vectors, whose base is the built-in data's network), ``base``
    elsewhere."""
    if family_of(data_shape) in ("8x8", "vector"):
        return "base"
    return "small" if str(device).split(":")[0] == "cpu" else "base"


def preset_for(data_shape: Sequence[int], size: str | None = None, *, device: str = "cpu") -> dict[str, Any]:
    """The preset (a dict of TrainConfig fields, a fresh copy) for data of ``data_shape`` in ``size``
    (``small``, ``base`` or ``large``; None: ``default_size(data_shape, device)``).

    Images whose shorter side exceeds 64 get one more resolution level of width ×1 (attention levels shifted
    with it) per doubling, so the lowest level is as small as at 64×64.
    """
    size = default_size(data_shape, device) if size is None else size
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    family = family_of(data_shape)
    preset = copy.deepcopy(PRESETS[family][size])
    if family == "64x64":
        extra = max(0, math.ceil(math.log2(min(data_shape[1:]) / 64) - 1e-9))
        if extra:
            model = preset["model"]
            model["channel_mults"] = [1] * extra + list(model["channel_mults"])
            model["attn_levels"] = [level + extra for level in model["attn_levels"]]
    return preset


def preset_name(data_shape: Sequence[int], size: str | None = None, *, device: str = "cpu") -> str:
    """"FAMILY/SIZE", e.g. "28x28/small"."""
    return f"{family_of(data_shape)}/{default_size(data_shape, device) if size is None else size}"


def count_parameters(model: dict[str, Any], data_shape: Sequence[int], num_classes: int = 10) -> int:
    """Parameters of the network ``model`` (a preset's model dict) for ``data_shape`` and ``num_classes``."""
    from cfgdiff.models import build_model

    config = dict(model)
    if config.get("arch", "unet") == "unet":
        config["image_shape"] = list(data_shape)
    else:
        config["dim"] = int(data_shape[0])
    config["num_classes"] = num_classes
    return sum(p.numel() for p in build_model(config).parameters())


def preset_table(num_classes: int = 10) -> list[dict[str, Any]]:
    """One row per preset: family, size, the canonical shape, parameters (for ``num_classes`` classes), the
    model and training fields, and whether it is the CPU default for its family."""
    rows = []
    for family, sizes in PRESETS.items():
        shape = CANONICAL_SHAPES[family]
        for size in sizes:
            preset = preset_for(shape, size)
            rows.append({"family": family, "size": size, "data_shape": list(shape),
                         "params": count_parameters(preset["model"], shape, num_classes),
                         "cpu_default": default_size(shape, "cpu") == size, **preset})
    return rows


DEFAULT_SAMPLING_CHUNK = 64  # rows per sampling chunk outside the 8x8 family on a CPU (cfgdiff.sampling.generate)


def default_chunk(data_shape: Sequence[int], device: str | torch.device = "cpu") -> int:
    """Rows per sampling chunk when the user gives none (``--batch-size`` of ``sample`` and ``eval``).

    Measured on the 2-core reference CPU (reports/training_benchmark.md, section 4; guided sampling, images/s by
    chunk at torch's default 2 threads and at 1 thread): the 8x8 digits network is fastest at 256 rows (1.37x
    chunk 64 at 2 threads, 1.02x at 1 thread), the 28x28 network at 64 rows (chunk 256: 0.58x), because a larger
    image's activations stop fitting the caches. So on a CPU: 256 rows for the presets' 8x8 family (shorter
    side at most 12 pixels) and for vectors, else 64. On an accelerator, where a bigger batch keeps the device
    busy: 256 rows (not measured in that report; choose ``--batch-size`` by memory there).
    """
    if torch.device(device).type != "cpu":
        return 256
    return 256 if family_of(data_shape) in ("8x8", "vector") else DEFAULT_SAMPLING_CHUNK
