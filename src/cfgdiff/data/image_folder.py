"""Image folders, the torchvision ``ImageFolder`` convention.

Layouts::

    ROOT/CLASS/*.png|jpg|jpeg|bmp|gif|webp|tif|tiff          (no test split: a held-out split is made)
    ROOT/train/CLASS/...  and  ROOT/test/CLASS/...            (the test folder is optional)

Class names are the class folders' names, sorted (label k = the k-th name); images may sit in nested folders
below a class folder. Files with other extensions, hidden files (".name") and files directly in ROOT are
skipped and counted (``Dataset.source["skipped_files"]``); hidden folders are ignored. Every class folder of
the training part must hold at least one image; test classes must be training classes.

Options: ``image_size`` (shorter side to it, then centre crop), ``channels`` (1 or 3; default: 1 when every
image is grayscale). Without ``image_size`` all images must have one size. Decoding follows
``cfgdiff.data.images``; the result is decoded once into the data cache (``cfgdiff.data.cache``).

Stored: uint8 [N, C, H, W], classes in order and files sorted by path within a class; training part, then test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cfgdiff.data.cache import file_stamp
from cfgdiff.data.dataset import DataError, DataSpec
from cfgdiff.data.images import decode_to_cache, is_image_name
from cfgdiff.data.source import RawData

FORMAT = "image-folder"


def detect(path: Path) -> bool:
    """Any folder (the last format tried): the checks of ``read`` say what is wrong with it."""
    return path.is_dir()


def _subfolders(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _class_files(folder: Path) -> tuple[list[Path], list[str]]:
    """(image files, skipped files) below a class folder, each sorted by relative path."""
    images, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            path = Path(dirpath) / fname
            (images if is_image_name(fname) and not fname.startswith(".") else skipped).append(path)
    key = lambda p: p.relative_to(folder).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(skipped, key=key)


def split_layout(root: Path) -> bool:
    """True for ROOT/train/CLASS (+ ROOT/test/CLASS)."""
    train = root / "train"
    return train.is_dir() and bool(_subfolders(train))


def scan(root: Path) -> tuple[list[Path], np.ndarray, int, tuple[str, ...], list[Path]]:
    """(image files, labels, number of test files at the end, class names, skipped files)."""
    split = split_layout(root)
    parts = [("train", root / "train"), ("test", root / "test")] if split else [("train", root)]
    skipped = [p for p in root.iterdir() if p.is_file()]
    if split:
        skipped += [p for p in (root / "train").iterdir() if p.is_file()]
    class_dirs = _subfolders(parts[0][1])
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected ROOT/CLASS/*.png, or ROOT/train/CLASS/... and "
                        "ROOT/test/CLASS/...)")
    names = tuple(d.name for d in class_dirs)
    index = {name: k for k, name in enumerate(names)}
    files: list[Path] = []
    labels: list[int] = []
    num_test = 0
    for part, folder in parts:
        if part == "test":
            if not folder.is_dir():
                break
            skipped += [p for p in folder.iterdir() if p.is_file()]
        for class_dir in class_dirs if part == "train" else _subfolders(folder):
            if class_dir.name not in index:
                raise DataError(f"{class_dir}: a test class that has no training folder (classes: "
                                f"{', '.join(names)})")
            images, other = _class_files(class_dir)
            skipped += other
            if not images and part == "train":
                raise DataError(f"{class_dir}: class {class_dir.name!r} has no images "
                                f"(extensions read: .png .jpg .jpeg .bmp .gif .webp .tif .tiff)")
            files += images
            labels += [index[class_dir.name]] * len(images)
            num_test += len(images) if part == "test" else 0
    return files, np.asarray(labels, dtype=np.int64), num_test, names, skipped


def read(path: Path, spec: DataSpec) -> RawData:
    """Every image of the folder, decoded once into the data cache (or found there)."""
    root = path.resolve()
    files, labels, num_test, names, skipped = scan(root)
    description = {"path": str(root), "files": [[p.relative_to(root).as_posix(), *file_stamp(p)] for p in files],
                   "labels": labels.tolist()}
    items = [(str(p), lambda p=p: p) for p in files]
    entry = decode_to_cache(FORMAT, description, items, labels, image_size=spec.image_size, channels=spec.channels)
    info = {"skipped_files": len(skipped), "skipped_examples": [p.relative_to(root).as_posix() for p in skipped[:5]],
            "layout": "ROOT/train|test/CLASS" if split_layout(root) else "ROOT/CLASS", "files": len(files)}
    return RawData(name=root.name, format=FORMAT, path=str(root), images=entry.images, labels=entry.labels,
                   label_file=str(root), num_test=num_test if split_layout(root) else None, class_names=names,
                   info=info, content_sha256=entry.meta.get("content_sha256"), cache_path=entry.path,
                   transformed=True)
