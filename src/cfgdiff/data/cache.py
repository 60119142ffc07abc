"""The decoded-image cache: image folders, EDM zips and Hugging Face sets are decoded once, then memory-mapped.

Where: ``{cache}/data/{format}-{key}/`` with ``{cache}`` = ``cfgdiff.runtime.cache.default_cache_dir()``
(``$CFGDIFF_CACHE_DIR``, else ``$XDG_CACHE_HOME/cfgdiff``, else ``~/.cache/cfgdiff``). An entry holds
``images.npy`` (uint8 [N, C, H, W], every row of the source, its own test rows last), ``labels.npy`` (int64 [N])
and ``meta.json`` (shape, class names, skipped files, the content hash), and, for sources without a test split
that are too large for memory, ``heldout-{fraction}-{seed}.npy`` (the rows reordered: training rows, then
held-out rows, so each split is one contiguous memory-mapped slice).

Invalidation: ``key`` is a hash of everything the decoded bytes depend on: the format, the resolved path, every
file's relative name, size and modification time (ns), ``image_size``, ``channels``, the columns read, and
``CACHE_VERSION``. Adding, removing, replacing or touching a file, or asking for another size or channel count,
gives a new key, so a stale entry is never read; old entries are not deleted (remove the folder to reclaim the
space). Entries are written under a temporary name and renamed into place, so a crash or a concurrent writer
never leaves a half-written entry behind. Where the cache cannot be written, the images are decoded into
memory instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cfgdiff.runtime.cache import default_cache_dir

CACHE_VERSION = 1  # bump when the decoded bytes of the same files would change
IMAGES_FILE, LABELS_FILE, META_FILE = "images.npy", "labels.npy", "meta.json"


def data_cache_dir() -> Path:
    """``{default_cache_dir()}/data``."""
    return default_cache_dir() / "data"


def file_stamp(path: Path) -> list[int]:
    """[size, mtime in ns] of a file: what the cache key sees of its content."""
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def content_key(description: dict[str, Any]) -> str:
    """The cache key: a hash of the JSON ``description`` (format, path, file stamps, options) and the version."""
    text = json.dumps({"cache_version": CACHE_VERSION, **description}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def content_sha256(images: np.ndarray, labels: np.ndarray, chunk_bytes: int = 1 << 26) -> str:
    """sha256 of the stored bytes: every image row (uint8, C order) in order, then the labels as int64
    little-endian. Two sources holding the same images and labels in the same order hash alike, whatever their
    format."""
    h = hashlib.sha256()
    n = images.shape[0]
    row_bytes = max(1, int(np.prod(images.shape[1:])))
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, n, step):
        h.update(memoryview(np.ascontiguousarray(images[start:start + step])).cast("B"))  # no copy when contiguous
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass
class CacheEntry:
    """Decoded rows: ``images`` a read-only memory map of ``path/images.npy`` (an in-memory array where the
    cache could not be written, ``path`` None)."""

    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]
    meta: dict[str, Any]
    path: Path | None


def entry_dir(fmt: str, key: str) -> Path:
    return data_cache_dir() / f"{fmt}-{key}"


def load_entry(fmt: str, key: str) -> CacheEntry | None:
    """The entry for ``key``, or None when there is none (or it is unreadable, which counts as none)."""
    path = entry_dir(fmt, key)
    try:
        meta = json.loads((path / META_FILE).read_text())
        images = np.load(path / IMAGES_FILE, mmap_mode="r")
        labels = np.load(path / LABELS_FILE)
    except (OSError, ValueError):
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
        return None
    return CacheEntry(images, labels.astype(np.int64, copy=False), meta, path)


def build_entry(
    fmt: str,
    key: str,
    *,
    shape: tuple[int, int, int, int],
    labels: np.ndarray,
    meta: dict[str, Any],
    fill: Callable[[np.ndarray], None],
) -> CacheEntry:
    """Decode once into a new entry: ``fill(images)`` writes every row of a uint8 array of ``shape`` (a memory
    map on disk). The content hash is added to ``meta``. Written under a temporary name, then renamed."""
    root = data_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{fmt}-{key}.", dir=root))
    except OSError:  # no writable cache: decode into memory
        images = np.empty(shape, dtype=np.uint8)
        fill(images)
        meta = {**meta, "content_sha256": content_sha256(images, labels)}
        return CacheEntry(images, labels, meta, None)
    try:
        images = np.lib.format.open_memmap(tmp / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=shape)
        fill(images)
        images.flush()
        meta = {**meta, "content_sha256": content_sha256(images, labels), "shape": list(shape[1:]),
                "count": int(shape[0])}
        del images
        np.save(tmp / LABELS_FILE, np.asarray(labels, dtype=np.int64))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        final = entry_dir(fmt, key)
        try:
            os.rename(tmp, final)
        except OSError:  # another process wrote the same entry first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    entry = load_entry(fmt, key)
    if entry is None:
        raise OSError(f"the data cache entry {final} could not be read back")
    return entry


def heldout_rows(entry_path: Path, images: np.ndarray, order: np.ndarray, tag: str) -> np.ndarray:
    """The rows of ``images`` in ``order`` (training rows, then held-out rows) as a read-only memory map
    ``entry_path/heldout-{tag}.npy``, written once (atomically) by copying in chunks."""
    path = entry_path / f"heldout-{tag}.npy"
    if not path.is_file():
        fd, tmp_name = tempfile.mkstemp(prefix=".heldout.", suffix=".npy", dir=entry_path)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(order), *images.shape[1:]))
            row_bytes = max(1, int(np.prod(images.shape[1:])))
            step = max(1, (1 << 26) // row_bytes)
            for start in range(0, len(order), step):
                idx = order[start:start + step]
                out[start:start + len(idx)] = images[idx]
            out.flush()
            del out
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return np.load(path, mmap_mode="r")
