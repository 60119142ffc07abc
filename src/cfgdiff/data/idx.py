"""IDX files, the format of the MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST).

A directory holds ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` and optionally the test split
``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``). An IDX file is a
big-endian header (two zero bytes, a type byte 0x08 for unsigned bytes, the number of dimensions) followed by
one 32-bit size per dimension and the data: images are [N, H, W] uint8, labels [N] uint8.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from cfgdiff.data.dataset import DataError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``directory`` (also the ``stem``-with-dot variant some mirrors use)."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of one IDX file with ``ndim`` dimensions; ``DataError`` naming the file otherwise."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        magic = raw[:4].hex() if len(raw) >= 4 else raw.hex()
        raise DataError(f"{path}: not an IDX file of {ndim}-D unsigned bytes (magic number 0x{magic}, "
                        f"expected 0x0000080{ndim})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: truncated or padded IDX file: header says {shape} = {expected} bytes of data, "
                        f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images [N, 1, H, W] uint8, labels [N] int64) of one split, or None when its files are absent."""
    image_stem, label_stem = IDX_FILES[split]
    image_path, label_path = find_idx_file(directory, image_stem), find_idx_file(directory, label_stem)
    if image_path is None and label_path is None:
        return None
    if image_path is None or label_path is None:
        missing = image_stem if image_path is None else label_stem
        raise DataError(f"{directory}: has the {split} {'labels' if image_path is None else 'images'} but not "
                        f"{missing}[.gz]")
    images = read_idx(image_path, 3)
    labels = read_idx(label_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{image_path} holds {images.shape[0]} images but {label_path} holds {labels.shape[0]} "
                        "labels")
    return np.ascontiguousarray(images[:, None]), labels.astype(np.int64)


def is_idx_directory(directory: Path) -> bool:
    """True when ``directory`` holds the training images of the IDX layout."""
    return directory.is_dir() and find_idx_file(directory, IDX_FILES["train"][0]) is not None
