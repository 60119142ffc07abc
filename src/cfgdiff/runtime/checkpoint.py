"""Checkpoints in safetensors: tensors by prefixed name, everything else as JSON metadata. Never a pickle.

Layout of one file:

* ``model.<name>``: raw weights; ``ema.<name>``: EMA weights (used for sampling by default);
* ``optim.<i>.<key>``: AdamW state of parameter i (``exp_avg``, ``exp_avg_sq``, ``step``);
* ``rng.<name>``: ``torch.Generator`` states as uint8 tensors, so a resumed run draws what it would have
  (``rng.generator`` is rank 0's; a distributed run adds ``rng.generator_rank<r>`` for the other ranks);
* metadata ``cfgdiff``: a JSON object (format version, step, model config, data shape, training config, ...).

Format versions: 1 (cfgdiff 0.1's trainer: ``rng.data_order`` + ``data_cursor``), 2 (the resumable batch
stream: ``data_consumed``, per-rank generators, ``world_size``). Both load; a newer version is refused.

Writes are atomic and durable (``atomic_write_bytes``): the bytes go to a temporary file beside the target,
which is fsynced and renamed over it, and the directory is fsynced, so a crash or SIGKILL at any moment leaves
either the previous file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as _safetensors_bytes

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
METADATA_KEY = "cfgdiff"

# Test hook: CFGDIFF_PAUSE_AT="point[:n]" makes the n-th (default first) arrival at ``pause_point(point)``
# create the file named by CFGDIFF_PAUSE_FILE (its content is the point) and then sleep CFGDIFF_PAUSE_SECONDS
# (default 60), so that a test can SIGKILL the process at exactly that point. Unset, it costs one dict lookup.
_PAUSE_COUNTS: dict[str, int] = {}


def pause_point(point: str) -> None:
    """Announce (and, in tests, pause at) a named point of a checkpoint write or of the training loop."""
    target = os.environ.get("CFGDIFF_PAUSE_AT")
    if not target:
        return
    name, _, nth = target.partition(":")
    if name != point:
        return
    _PAUSE_COUNTS[point] = _PAUSE_COUNTS.get(point, 0) + 1
    if _PAUSE_COUNTS[point] != int(nth or 1):
        return
    marker = os.environ.get("CFGDIFF_PAUSE_FILE")
    if marker:
        Path(marker).write_text(point)
    time.sleep(float(os.environ.get("CFGDIFF_PAUSE_SECONDS", "60")))


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


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename or unlink in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, pause: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically: temp file beside it, fsync, rename over it, fsync the directory.

    ``pause`` names the test-hook points (``<pause>-write`` half-way through the bytes, ``<pause>-rename``
    before the rename); see ``pause_point``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if pause:
                f.flush()
                pause_point(pause + "-write")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        if pause:
            pause_point(pause + "-rename")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text (config files, rewritten logs)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def checkpoint_bytes(
    *,
    model: Mapping[str, torch.Tensor],
    ema: Mapping[str, torch.Tensor] | None = None,
    optim: Mapping[str, torch.Tensor] | None = None,
    rng: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any],
) -> bytes:
    """The safetensors bytes of one checkpoint (see the module docstring for the layout)."""
    tensors = _prefixed("model", model)
    for prefix, group in (("ema", ema), ("optim", optim), ("rng", rng)):
        if group:
            tensors.update(_prefixed(prefix, group))
    meta = {METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **metadata}, sort_keys=True)}
    return _safetensors_bytes(tensors, metadata=meta)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: Mapping[str, torch.Tensor],
    ema: Mapping[str, torch.Tensor] | None = None,
    optim: Mapping[str, torch.Tensor] | None = None,
    rng: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any],
) -> None:
    """Write one checkpoint atomically and durably (``atomic_write_bytes``)."""
    data = checkpoint_bytes(model=model, ema=ema, optim=optim, rng=rng, metadata=metadata)
    atomic_write_bytes(path, data, pause="save")


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
        data = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} has corrupt cfgdiff metadata ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} has corrupt cfgdiff metadata (not a JSON object)")
    version = data.get("format_version", 1)
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint format {version}; this cfgdiff reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))} (upgrade cfgdiff)")
    return data


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
