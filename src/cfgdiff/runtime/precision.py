"""The network's precision and memory layout: what the hardware offers, and the fastest form, measured once per
machine and network and cached.

A *form* is (precision, memory format): ``fp32`` or ``bf16`` (the network's forward pass under
``torch.autocast(device, bfloat16)``: convolutions and matrix products in bf16, normalisations and the rest in
fp32, the output cast back to fp32 before the solver or the loss sees it) and ``contiguous`` or ``channels-last``
(NHWC images and convolution weights). ``auto`` in either picks by measurement (``choose_form``): a few calls of
the actual network at the actual batch shape in each candidate form, the fastest kept, the choice cached under
``<cache dir>/network_forms/`` keyed by the machine (``machine_key``) and the network (class, parameter count,
config, input shape). A cached entry whose key, format or choice does not match what would be chosen from is
stale, one that does not parse is corrupt: both are ignored and rewritten, never trusted.

``auto`` never picks bf16 where ``bf16_supported(device)`` says the hardware has no fast bf16 (a CPU without
AVX512-BF16 or AMX, a CUDA GPU for which ``torch.cuda.is_bf16_supported()`` is false): there it is fp32. That one
function is the capability probe; tests replace it (``monkeypatch.setattr(precision, "bf16_supported", ...)``).

``enable_compile_cache()``: ``TORCHINDUCTOR_CACHE_DIR`` under cfgdiff's cache directory unless set, so the
FX-graph cache of ``torch.compile`` makes a second run's compilation cheaper.

This module imports only ``runtime.cache`` of the package (the layer below everything that runs networks).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from cfgdiff.runtime.cache import default_cache_dir

PRECISIONS = ("fp32", "bf16", "auto")
MEMORY_FORMATS = ("auto", "contiguous", "channels-last")
CACHE_FORMAT = 1  # the layout of a cached entry; an entry of another format is stale
CACHE_SUBDIR = "network_forms"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")  # /proc/cpuinfo flags that give a CPU fast bf16


class PrecisionUnavailable(ValueError):
    """bf16 asked for explicitly on a device whose hardware has no fast bf16 (the capability probe says no)."""


@dataclass(frozen=True)
class NetworkForm:
    """How the network runs: ``precision`` "fp32" or "bf16" (autocast), ``memory_format`` "contiguous" or
    "channels-last"; ``chosen_by`` says how: "asked", "measured", "cached" or "only candidate"."""

    precision: str = "fp32"
    memory_format: str = "contiguous"
    chosen_by: str = "asked"

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels-last"

    @property
    def name(self) -> str:
        """"fp32", "bf16 + channels-last", ...: what a printed line says."""
        return self.precision + (" + channels-last" if self.channels_last else "")

    def record(self) -> dict[str, str]:
        """What a run records (results.json meta, the sample record, train's setup line)."""
        return {"precision": self.precision, "memory_format": self.memory_format, "chosen_by": self.chosen_by}


# -- what the hardware has ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(CPU model name, its feature flags) from /proc/cpuinfo; ("<machine>", {}) where there is none."""
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def bf16_supported(device: torch.device | str) -> bool:
    """The capability probe: does ``device``'s hardware run bf16 fast? A CPU with AVX512-BF16 or AMX-BF16
    (/proc/cpuinfo flags ``avx512_bf16``, ``amx_bf16``); a CUDA device when ``torch.cuda.is_bf16_supported()``;
    nothing else (MPS and others: fp32). Without native bf16 a CPU still runs bf16, emulated and slower."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(cpu_info()[1] & {"avx512_bf16", "amx_bf16"})
    return False


def machine_key(device: torch.device | str) -> dict[str, Any]:
    """What a cached choice depends on about the machine: CPU model and its bf16 flags, torch version, thread
    count, and the device (with its name on CUDA)."""
    device = torch.device(device)
    model, flags = cpu_info()
    key: dict[str, Any] = {"cpu": model, "cpu_flags": sorted(flags & set(CPU_BF16_FLAGS)),
                           "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda" and torch.cuda.is_available():
        key["device_name"] = torch.cuda.get_device_name(device)
    return key


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def network_key(network: Any, input_shape: Iterable[int], *, purpose: str) -> dict[str, Any]:
    """What a cached choice depends on about the network: its class, parameter count, config (``config`` or
    ``model_config`` when it has one), the input shape [B, ...] it runs at, and ``purpose`` ("sampling":
    forward passes; "training": forward and backward)."""
    params = sum(p.numel() for p in network.parameters()) if isinstance(network, torch.nn.Module) else 0
    config = getattr(network, "config", None) or getattr(network, "model_config", None)
    return {"class": f"{type(network).__module__}.{type(network).__qualname__}", "parameters": int(params),
            "config": _jsonable(config) if config is not None else None, "input_shape": [int(s) for s in input_shape],
            "purpose": purpose}


# -- the cache ------------------------------------------------------------------------------------------------------


class FormCache:
    """Chosen forms on disk: one JSON file per (machine, network, candidates) key, named by the key's SHA-256.

    ``load`` returns the cached form only when the file parses, has ``CACHE_FORMAT``, holds exactly this key and
    chose one of the candidates; anything else (stale or corrupt) is None, and ``store`` rewrites it."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir() / CACHE_SUBDIR

    @staticmethod
    def digest(key: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(_jsonable(key), sort_keys=True).encode()).hexdigest()[:32]

    def path(self, key: Mapping[str, Any]) -> Path:
        return self.directory / f"{self.digest(key)}.json"

    def load(self, key: Mapping[str, Any], candidates: Iterable[NetworkForm]) -> NetworkForm | None:
        try:
            entry = json.loads(self.path(key).read_text())
            if entry.get("format") != CACHE_FORMAT or entry.get("key") != _jsonable(key):
                return None
            form = NetworkForm(precision=entry["choice"]["precision"],
                               memory_format=entry["choice"]["memory_format"], chosen_by="cached")
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
        allowed = {(c.precision, c.memory_format) for c in candidates}
        return form if (form.precision, form.memory_format) in allowed else None

    def store(self, key: Mapping[str, Any], form: NetworkForm, seconds: Mapping[str, float]) -> None:
        """Write the entry atomically (a temporary file renamed); a cache that cannot be written is skipped."""
        entry = {"format": CACHE_FORMAT, "key": _jsonable(key), "choice": form.record(),
                 "seconds_per_call": dict(seconds), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entry, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError:
            pass


# -- choosing --------------------------------------------------------------------------------------------------


def check_form_names(precision: str, memory_format: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; choose from {', '.join(MEMORY_FORMATS)}")


def check_precision(precision: str, device: torch.device | str) -> None:
    """``PrecisionUnavailable`` (one line) for an explicit bf16 where the probe says the hardware has none."""
    if precision == "bf16" and not bf16_supported(device):
        kind = torch.device(device).type
        what = ("this CPU has neither AVX512-BF16 nor AMX-BF16" if kind == "cpu" else
                f"torch.cuda.is_bf16_supported() is false for {device}" if kind == "cuda" else
                f"cfgdiff knows no fast bf16 on {kind}")
        raise PrecisionUnavailable(f"bf16 is not available on {device} ({what}); use --precision fp32 or auto")


def candidate_forms(precision: str, memory_format: str, *, device: torch.device | str,
                    images: bool) -> list[NetworkForm]:
    """The forms ``choose_form`` picks from: ``auto`` precision is fp32 and, where ``bf16_supported``, bf16;
    ``auto`` layout is contiguous and, for images ([B, C, H, W]), channels-last; a layout on vectors is
    contiguous (there is nothing to lay out)."""
    check_form_names(precision, memory_format)
    precisions = [precision] if precision != "auto" else ["fp32", *(["bf16"] if bf16_supported(device) else [])]
    if not images:
        formats = ["contiguous"]
    else:
        formats = [memory_format] if memory_format != "auto" else ["contiguous", "channels-last"]
    return [NetworkForm(p, f) for p in precisions for f in formats]


def time_call(fn: Callable[[], Any], *, device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 3,
              budget_s: float = 0.5) -> float:
    """Seconds of one call of ``fn``: the fastest of up to ``repeats`` timed calls after ``warmup`` untimed
    ones, stopping early once ``budget_s`` is spent (at least one timed call; CUDA synchronised)."""
    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    best, spent = float("inf"), 0.0
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        sync()
        seconds = time.perf_counter() - t0
        best, spent = min(best, seconds), spent + seconds
        if spent >= budget_s:
            break
    return best


def choose_form(precision: str, memory_format: str, *, device: torch.device | str, images: bool,
                measure: Callable[[NetworkForm], float], key: Mapping[str, Any] | None = None,
                cache: FormCache | None = None) -> NetworkForm:
    """The form to run in. Explicit choices are returned as asked (check ``check_precision`` first where an
    explicit bf16 must exist); with ``auto`` in either, the candidates (``candidate_forms``) are timed by
    ``measure(form) -> seconds per call`` and the fastest returned, unless one candidate is all there is.
    ``key`` (``network_key``; the machine's is added) and ``cache`` (default: ``FormCache()``): a valid cached
    choice is returned without measuring; a measured one is stored."""
    candidates = candidate_forms(precision, memory_format, device=device, images=images)
    if precision != "auto" and (memory_format != "auto" or not images):
        return candidates[0]
    if len(candidates) == 1:
        return replace(candidates[0], chosen_by="only candidate")
    full_key = None
    if key is not None:
        cache = cache if cache is not None else FormCache()
        full_key = {"machine": machine_key(device), "network": dict(key),
                    "candidates": [[c.precision, c.memory_format] for c in candidates]}
        cached = cache.load(full_key, candidates)
        if cached is not None:
            return cached
    seconds = {c.name: float(measure(c)) for c in candidates}
    best = min(candidates, key=lambda c: seconds[c.name])
    best = replace(best, chosen_by="measured")
    if full_key is not None and cache is not None:
        cache.store(full_key, best, seconds)
    return best


def enable_compile_cache() -> Path:
    """``TORCHINDUCTOR_CACHE_DIR`` = ``<cache dir>/inductor`` unless already set (torch's on-disk FX-graph and
    kernel caches then live beside cfgdiff's other caches and survive ``/tmp`` clean-ups); returns the folder."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(default_cache_dir() / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
