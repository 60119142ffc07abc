"""IDX files, the format of the MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST).

A directory holds ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` and optionally the test split
``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``). An IDX file is a
big-endian header (two zero bytes, a type byte 0x08 for unsigned bytes, the number of dimensions) followed by
one 32-bit size per dimension and the data: images are [N, H, W] uint8, labels [N] uint8. Files with a common
prefix (``emnist-balanced-train-images-idx3-ubyte.gz``, ``...-test-images-...``) are found too when the folder
holds one such set. The MNIST family carries no class names: give them with ``DataSpec.class_names``
(``--class-names``), else the classes are named "0", "1", ....

Stored: uint8 [N, 1, H, W], the training rows then the t10k rows (the test split), in file order.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from cfgdiff.data.dataset import DataError, DataSpec
from cfgdiff.data.source import RawData

FORMAT = "idx"

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``directory`` (also the ``stem``-with-dot variant some mirrors use), else the one
    file named ``PREFIX-stem[.gz]`` (EMNIST's naming, with ``t10k`` spelled ``test``)."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    tails = (stem, stem.replace("t10k-", "test-"))
    found = sorted(p for p in directory.glob("*-*") if p.is_file()
                   and any(p.name.endswith(f"-{t}") or p.name.endswith(f"-{t}.gz") for t in tails))
    if len(found) > 1:
        raise DataError(f"{directory}: holds several IDX sets ({', '.join(p.name for p in found)}); point the data "
                        "path at a folder holding one of them")
    return found[0] if found else None


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_header(f, path: Path, ndim: int) -> tuple[int, ...]:
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != _UBYTE or head[3] != ndim:
        raise DataError(f"{path}: not an IDX file of {ndim}-D unsigned bytes (magic number 0x{head.hex()}, "
                        f"expected 0x0000080{ndim})")
    sizes = f.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    return tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(ndim))


def idx_shape(path: Path, ndim: int) -> tuple[int, ...]:
    """The shape an IDX file's header declares (nothing else is read)."""
    try:
        with _open(path) as f:
            return _read_header(f, path, ndim)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read ({err})") from None


def read_idx(path: Path, ndim: int, out: np.ndarray | None = None) -> np.ndarray:
    """The uint8 array of one IDX file with ``ndim`` dimensions (read into ``out`` when given, a C-contiguous
    uint8 array of the declared size); ``DataError`` naming the file for a wrong magic number, a truncated or
    padded file. The data is read straight into the array (no second copy of the file in memory)."""
    try:
        with _open(path) as f:
            shape = _read_header(f, path, ndim)
            expected = int(np.prod(shape))
            if out is None:
                out = np.empty(shape, dtype=np.uint8)
            elif out.size != expected:
                raise DataError(f"{path}: holds {shape}, expected {out.size} values")
            view = memoryview(out.reshape(-1)).cast("B")
            filled = 0
            while filled < expected:
                n = f.readinto(view[filled:filled + (1 << 20)])  # 1 MiB at a time: gzip decodes via a buffer
                if not n:
                    break
                filled += n
            extra = 0
            while chunk := f.read(1 << 20):
                extra += len(chunk)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    if filled != expected or extra:
        raise DataError(f"{path}: truncated or padded IDX file: header says {shape} = {expected} bytes of data, "
                        f"found {filled + extra}")
    return out.reshape(shape)


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


def detect(path: Path) -> bool:
    """A folder holding ``train-images-idx3-ubyte[.gz]`` (or a prefixed variant)."""
    return is_idx_directory(path)


def read(path: Path, spec: DataSpec) -> RawData:
    """Every row of an IDX folder: the training files, then the t10k files when present (read straight into
    one array)."""
    files = {split: [find_idx_file(path, stem) for stem in IDX_FILES[split]] for split in IDX_FILES}
    for split, (images_path, labels_path) in files.items():
        if (images_path is None) != (labels_path is None):
            missing = IDX_FILES[split][0] if images_path is None else IDX_FILES[split][1]
            raise DataError(f"{path}: has the {split} {'labels' if images_path is None else 'images'} but not "
                            f"{missing}[.gz]")
    if files["train"][0] is None:
        raise DataError(f"{path}: no {IDX_FILES['train'][0]}[.gz] in this folder")
    splits = [split for split in ("train", "test") if files[split][0] is not None]
    shapes = {split: idx_shape(files[split][0], 3) for split in splits}
    if len(splits) == 2 and shapes["test"][1:] != shapes["train"][1:]:
        raise DataError(f"{files['test'][0]}: images of {shapes['test'][1:]} pixels, the training images are "
                        f"{shapes['train'][1:]}")
    total = sum(shapes[split][0] for split in splits)
    images = np.empty((total, 1, *shapes["train"][1:]), dtype=np.uint8)
    labels = []
    start = 0
    for split in splits:
        images_path, labels_path = files[split]
        n = shapes[split][0]
        read_idx(images_path, 3, out=images[start:start + n, 0])
        split_labels = read_idx(labels_path, 1)
        if len(split_labels) != n:
            raise DataError(f"{images_path} holds {n} images but {labels_path} holds {len(split_labels)} labels")
        labels.append(split_labels.astype(np.int64))
        start += n
    names = {f"{split}_{kind}": p.name for split in splits for kind, p in zip(("images", "labels"), files[split],
                                                                             strict=True)}
    return RawData(name=path.name, format=FORMAT, path=str(path.resolve()), images=images,
                   labels=np.concatenate(labels), label_file=str(files["train"][1]),
                   test_label_file=None if len(splits) == 1 else str(files["test"][1]),
                   num_test=shapes["test"][0] if len(splits) == 2 else None, info={"files": names})
