"""EDM's dataset zip, as written by ``dataset_tool.py`` of NVlabs' EDM and EDM2 (so prepared data works as is).

Layout: image files anywhere in the archive (``00000/img00000000.png``, ...) and ``dataset.json`` holding
``{"labels": [["00000/img00000000.png", 6], ...]}``, one integer class label per image file. As in EDM, the
images are the archive's image files sorted by name, and each takes its label from ``dataset.json``. A zip
without labels (``"labels": null``, EDM's unconditional data) is refused: a class-conditional model needs
them. Other files are skipped and counted. The format carries no class names (``DataSpec.class_names`` gives
them) and no test split (a held-out split is made). Decoding follows ``cfgdiff.data.images`` (``image_size``,
``channels`` as for image folders), once, into the data cache.

Stored: uint8 [N, C, H, W] in file-name order.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cfgdiff.data.cache import file_stamp
from cfgdiff.data.dataset import DataError, DataSpec
from cfgdiff.data.images import decode_to_cache, is_image_name
from cfgdiff.data.source import RawData

FORMAT = "edm-zip"
LABELS_FILE = "dataset.json"


def detect(path: Path) -> bool:
    """A zip archive (``.npz`` archives of arrays are recognised before this)."""
    return path.is_file() and zipfile.is_zipfile(path)


def _labels(zf: zipfile.ZipFile, path: Path) -> dict[str, object]:
    no_labels = (f"{path}: no {LABELS_FILE} with labels; an EDM dataset zip needs {LABELS_FILE} holding "
                 '{"labels": [[file, class], ...]} (dataset_tool.py writes it for labelled data)')
    if LABELS_FILE not in zf.namelist():
        raise DataError(no_labels)
    try:
        data = json.loads(zf.read(LABELS_FILE))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}/{LABELS_FILE}: not valid JSON ({err})") from None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not labels:
        raise DataError(no_labels)
    try:
        return {str(name).replace("\\", "/"): label for name, label in labels}
    except (TypeError, ValueError):
        raise DataError(f'{path}/{LABELS_FILE}: "labels" must be a list of [file, class] pairs') from None


def read(path: Path, spec: DataSpec) -> RawData:
    """Every labelled image of the archive, decoded once into the data cache (or found there)."""
    path = path.resolve()
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path}: not a readable zip archive ({err})") from None
    with zf:
        by_name = _labels(zf, path)
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
        images = [n for n in names if is_image_name(n)]
        skipped = [n for n in names if not is_image_name(n) and n != LABELS_FILE]
        labels = []
        for n in images:
            if n not in by_name:
                raise DataError(f"{path}: {n} has no label in {LABELS_FILE}")
            label = by_name[n]
            if isinstance(label, bool) or not isinstance(label, int):
                raise DataError(f"{path}/{LABELS_FILE}: the label of {n} is {label!r}, not an integer class")
            labels.append(label)
        missing = sorted(set(by_name) - set(images))
        if missing:
            raise DataError(f"{path}/{LABELS_FILE}: labels {missing[0]}, which is not an image in the archive "
                            f"({len(missing)} such)")
        labels_np = np.asarray(labels, dtype=np.int64)

        def member(name: str) -> bytes:
            try:
                return zf.read(name)
            except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as err:
                raise DataError(f"{path}/{name}: cannot read it from the archive ({err})") from None

        items = [(f"{path}/{n}", lambda n=n: member(n)) for n in images]
        description = {"path": str(path), "stamp": file_stamp(path)}
        entry = decode_to_cache(FORMAT, description, items, labels_np, image_size=spec.image_size,
                                channels=spec.channels)
    info = {"skipped_files": len(skipped), "skipped_examples": skipped[:5], "files": len(images)}
    return RawData(name=path.stem, format=FORMAT, path=str(path), images=entry.images, labels=entry.labels,
                   label_file=f"{path}/{LABELS_FILE}", class_names=None, info=info,
                   content_sha256=entry.meta.get("content_sha256"), cache_path=entry.path, transformed=True)
