"""Checkpoints in safetensors: tensors by prefixed name, everything else as JSON metadata. Never a pickle.

Layout of one file:

* ``model.<name>``: raw weights; ``ema.<name>``: EMA weights (used for sampling by default);
* ``optim.<i>.<key>``: AdamW state of parameter i (``exp_avg``, ``exp_avg_sq``, ``step``);
* ``rng.<name>``: ``torch.Generator`` states as uint8 tensors, so a resumed run draws what it would have;
* metadata ``cfgdiff``: a JSON object (format version, step, model config, data shape, training config, ...).

Writes are atomic: the file is written beside the target, fsynced, and renamed over it, so a crash leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
METADATA_KEY = "cfgdiff"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, not safetensors, or not written by cfgdiff."""


def _prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Per-parameter optimizer state as flat tensors ``<param index>.<key>``."""
    out: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{index}.{key}"] = torch.as_tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]) -> None:
    """Inverse of ``optimizer_tensors``: restore the per-parameter state (hyperparameters stay as built)."""
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: Mapping[str, torch.Tensor],
    ema: Mapping[str, torch.Tensor] | None = None,
    optim: Mapping[str, torch.Tensor] | None = None,
    rng: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any],
) -> None:
    """Write one checkpoint atomically (temp file + fsync + rename)."""
    tensors = _prefixed("model", model)
    for prefix, group in (("ema", ema), ("optim", optim), ("rng", rng)):
        if group:
            tensors.update(_prefixed(prefix, group))
    meta = {METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **metadata}, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_checkpoint(run_dir: str | os.PathLike, file_name: str, what: str = "checkpoint") -> Path:
    """``run_dir/file_name`` for a run directory, or ``run_dir`` itself for a file; ``CheckpointError`` if absent."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a cfgdiff checkpoint, without loading tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from None
    if METADATA_KEY not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a cfgdiff checkpoint (no metadata)")
    try:
        return json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} has corrupt cfgdiff metadata ({err})") from None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a checkpoint: ({"model": ..., "ema": ..., "optim": ..., "rng": ...}, metadata).

    Raises ``CheckpointError`` for a missing, truncated or foreign file.
    """
    metadata = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({err})") from None
    groups = {prefix: _unprefixed(prefix, tensors) for prefix in ("model", "ema", "optim", "rng")}
    if not groups["model"]:
        raise CheckpointError(f"{path} holds no model weights")
    return groups, metadata
