"""Denoising networks. Every model follows one contract:

    eps = model(z, logsnr, labels)

z: [B, *data_shape] float; logsnr: [B] float, λ = log(α²/σ²); labels: [B] int64 in [0, num_classes], where
label `num_classes` is the null (unconditional) class ∅. The output is the predicted noise ε with z's
shape and dtype. A network never sees the guidance weight w; guidance combines its predictions elsewhere. The
one exception is a guidance-distilled student (``w_embedding=True``, see ``cfgdiff.distillation``), called as
``model(z, logsnr, labels, w)``; ``student.at(w)`` turns it back into the contract above.

Each model has `num_classes`, `data_shape` and `config()`; `build_model(model.config())` rebuilds the same
architecture (load the weights with `load_state_dict(..., strict=True)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from cfgdiff.models.embeddings import (
    ClassEmbedding,
    ConditioningEmbedding,
    GuidanceWeightEmbedding,
    LogSNREmbedding,
)
from cfgdiff.models.mlp import MLPDenoiser
from cfgdiff.models.unet import UNet

__all__ = [
    "MODEL_REGISTRY",
    "ClassEmbedding",
    "ConditioningEmbedding",
    "GuidanceWeightEmbedding",
    "LogSNREmbedding",
    "MLPDenoiser",
    "UNet",
    "build_model",
]

MODEL_REGISTRY: dict[str, type[nn.Module]] = {"unet": UNet, "mlp": MLPDenoiser}


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from `model.config()`: {"arch": name, **constructor kwargs}."""
    kwargs = dict(config)
    arch = kwargs.pop("arch", None)
    if arch not in MODEL_REGISTRY:
        raise ValueError(f"unknown model arch {arch!r} in config; expected one of {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[arch](**kwargs)
