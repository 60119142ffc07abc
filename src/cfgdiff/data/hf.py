"""Hugging Face data sets on local disk: a ``save_to_disk`` folder, or parquet files (optional extra ``hf``).

Source ``hf:PATH`` (a save_to_disk folder or parquet file/folder is also recognised without the prefix):

* ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folders (``state.json`` or ``dataset_dict.json``),
  read with ``datasets.load_from_disk`` (memory-mapped Arrow). A ``DatasetDict``'s ``train`` split is the training
  part (a single split is taken as it) and its ``test`` split, if any, the test split.
* Parquet: one ``.parquet`` file, or a folder of them (as the Hub lays them out: ``data/train-00000-of-00002
  .parquet``, ``data/test-...``): files whose path names ``test`` form the test split, the others (or those that
  name ``train``, where any does) the training part; ``validation`` files are left out. Read with pyarrow, one
  row group at a time; the features (class names) come from the files' ``huggingface`` schema metadata.

Columns: ``DataSpec.image_column`` (default: the column whose feature is ``Image``, else one named ``image`` or
``img``) holding encoded image files (``{"bytes", "path"}`` structs or raw bytes), and ``DataSpec.label_column``
(default: one named ``label``, ``labels``, ``fine_label``, ``class`` or ``target``, else the first
``ClassLabel``) holding integer classes (``ClassLabel`` names become the class names) or strings (sorted, they
become the class names). The images are decoded once into the data cache, as image folders are
(``image_size``, ``channels`` likewise).

Nothing is ever downloaded: ``HF_DATASETS_OFFLINE=1`` and ``HF_HUB_OFFLINE=1`` are set before ``datasets`` is
imported, and a name that is no local path (a Hub name) is refused with the way to save it locally.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cfgdiff.data.cache import file_stamp
from cfgdiff.data.dataset import DataError, DataSpec
from cfgdiff.data.images import decode_to_cache
from cfgdiff.data.source import RawData

FORMAT = "hf"
PREFIX = "hf:"
EXTRA = "pip install 'cfgdiff[hf]' (the datasets package)"
IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")
_BLOCK_ROWS = 1024


def _offline() -> None:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"


def import_datasets():
    """The ``datasets`` package, imported offline; ``DataError`` naming the extra when it is missing."""
    _offline()
    try:
        import datasets
    except ImportError:
        raise DataError(f"Hugging Face data needs the optional extra: {EXTRA}") from None
    return datasets


def _import_parquet():
    _offline()
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"Hugging Face parquet data needs the optional extra: {EXTRA}") from None
    return pq


def hub_name_message(source: str) -> str:
    name = source[len(PREFIX):] if source.startswith(PREFIX) else source
    return (f"{source}: no such local path, and cfgdiff never downloads; save the data set locally first, e.g. "
            f"python -c \"import datasets; datasets.load_dataset('{name}').save_to_disk('DIR')\", then pass hf:DIR")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix == ".parquet" else []
    return sorted(path.rglob("*.parquet")) if path.is_dir() else []


def detect(path: Path) -> bool:
    """A save_to_disk folder, a ``.parquet`` file, or a folder holding ``.parquet`` files."""
    return is_saved_dataset(path) or bool(parquet_files(path))


class _Column:
    """Row i of one column over several blocks (row groups, or slices of a table), reading one block at a time:
    sequential access reads every block once."""

    def __init__(self, blocks: list[tuple[int, Callable[[], list[Any]]]]) -> None:
        self.starts = np.cumsum([0] + [n for n, _ in blocks]).tolist()
        self.loaders = [load for _, load in blocks]
        self.current: tuple[int, list[Any]] | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def __call__(self, i: int) -> Any:
        b = bisect.bisect_right(self.starts, i) - 1
        if self.current is None or self.current[0] != b:
            self.current = (b, self.loaders[b]())
        return self.current[1][i - self.starts[b]]


def _table_blocks(table, column: str) -> list[tuple[int, Callable[[], list[Any]]]]:
    n = table.num_rows
    return [(min(_BLOCK_ROWS, n - s), lambda s=s: table.slice(s, _BLOCK_ROWS).column(column).to_pylist())
            for s in range(0, n, _BLOCK_ROWS)]


def _parquet_blocks(pf, column: str) -> list[tuple[int, Callable[[], list[Any]]]]:
    def load(g: int) -> list[Any]:
        return pf.read_row_group(g, columns=[column]).column(0).to_pylist()

    return [(pf.metadata.row_group(g).num_rows, lambda g=g: load(g)) for g in range(pf.num_row_groups)]


def _pick_columns(features: dict[str, Any], columns: list[str], spec: DataSpec, where: str) -> tuple[str, str]:
    def check(name: str, option: str) -> str:
        if name not in columns:
            raise DataError(f"{where}: no column {name!r} ({option}); its columns: {', '.join(columns)}")
        return name

    if spec.image_column is not None:
        image = check(spec.image_column, "--image-column")
    else:
        typed = [c for c in columns if (features.get(c) or {}).get("_type") == "Image"]
        named = [c for c in IMAGE_COLUMNS if c in columns]
        if not typed and not named:
            raise DataError(f"{where}: no image column found; name it with --image-column (columns: "
                            f"{', '.join(columns)})")
        image = (typed or named)[0]
    if spec.label_column is not None:
        label = check(spec.label_column, "--label-column")
    else:
        named = [c for c in LABEL_COLUMNS if c in columns]
        typed = [c for c in columns if (features.get(c) or {}).get("_type") == "ClassLabel"]
        if not typed and not named:
            raise DataError(f"{where}: no label column found; name it with --label-column (columns: "
                            f"{', '.join(columns)})")
        label = (named or typed)[0]
    return image, label


def _labels(values: list[Any], feature: dict[str, Any] | None, where: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Integer labels (and ClassLabel names), or strings mapped to their sorted order (the names)."""
    if any(v is None for v in values):
        raise DataError(f"{where}: the label column has missing values")
    if values and all(isinstance(v, str) for v in values):
        names = tuple(sorted(set(values)))
        index = {n: k for k, n in enumerate(names)}
        return np.asarray([index[v] for v in values], dtype=np.int64), names
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise DataError(f"{where}: the label column must hold integer classes or strings")
    names = tuple(feature["names"]) if feature and feature.get("_type") == "ClassLabel" else None
    return np.asarray(values, dtype=np.int64), names


def _split_of(path: Path, root: Path) -> str:
    parts = re.split(r"[-_./\\]", path.relative_to(root).as_posix() if path != root else path.name)
    for token, split in (("test", "test"), ("validation", "validation"), ("valid", "validation"),
                         ("val", "validation"), ("train", "train")):
        if token in parts:
            return split
    return "other"


def _encoded(value: Any, base: Path, where: str) -> bytes | Path:
    """The encoded image file of one cell: a ``{"bytes", "path"}`` struct or raw bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            p = Path(value["path"])
            p = p if p.is_absolute() else base / p
            if p.is_file():
                return p
            raise DataError(f"{where}: the image file {value['path']} it refers to does not exist")
    raise DataError(f"{where}: not an encoded image (expected image bytes or a {{bytes, path}} struct)")


def read(path: Path, spec: DataSpec) -> RawData:
    """Every row of a save_to_disk folder or of parquet files: training rows, then test rows."""
    source = f"{PREFIX}{path}"
    if not path.exists():
        raise DataError(hub_name_message(spec.source if spec.source.startswith(PREFIX) else source))
    root = path.resolve()
    parts: list[tuple[_Column, list[Any], dict[str, Any], list[str], str]] = []  # per split: images, labels, ...
    if is_saved_dataset(root):
        datasets = import_datasets()
        try:
            loaded = datasets.load_from_disk(str(root))
        except Exception as err:  # noqa: BLE001 - any failure of a foreign reader is one line here
            raise DataError(f"{root}: cannot load the saved data set ({str(err).strip().splitlines()[0]})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded and len(loaded) != 1:
                raise DataError(f"{root}: a DatasetDict without a train split (splits: {', '.join(loaded)})")
            train = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
            pieces = [("train", train)] + ([("test", loaded["test"])] if "test" in loaded else [])
        else:
            pieces = [("train", loaded)]
        files = sorted(p for p in root.rglob("*") if p.is_file())
        for split, ds in pieces:
            table = ds.data.table
            features = ds.features.to_dict()
            image, label = _pick_columns(features, table.column_names, spec, str(root))
            labels = table.column(label).to_pylist()
            parts.append((_Column(_table_blocks(table, image)), labels, features, [image, label], f"{root} ({split})"))
    else:
        pq = _import_parquet()
        files = parquet_files(root)
        if not files:
            raise DataError(f"{root}: no .parquet files")
        by_split: dict[str, list[Path]] = {}
        for f in files:
            by_split.setdefault(_split_of(f, root if root.is_dir() else root.parent), []).append(f)
        train_files = by_split.get("train") or by_split.get("other") or []
        if not train_files:
            raise DataError(f"{root}: no training parquet files (only {', '.join(sorted(by_split))})")
        for split, split_files in (("train", train_files), ("test", by_split.get("test", []))):
            if not split_files:
                continue
            blocks, labels, features, picked = [], [], {}, None
            for f in split_files:
                try:
                    pf = pq.ParquetFile(f)
                except Exception as err:  # noqa: BLE001
                    raise DataError(f"{f}: not a readable parquet file ({str(err).strip().splitlines()[0]})") from None
                meta = (pf.schema_arrow.metadata or {}).get(b"huggingface")
                features = json.loads(meta).get("info", {}).get("features", {}) if meta else {}
                columns = pf.schema_arrow.names
                picked = picked or _pick_columns(features, columns, spec, str(f))
                if picked[0] not in columns or picked[1] not in columns:
                    raise DataError(f"{f}: lacks the columns {picked[0]!r}/{picked[1]!r} of the other files")
                blocks += _parquet_blocks(pf, picked[0])
                labels += pq.read_table(f, columns=[picked[1]]).column(0).to_pylist()
            parts.append((_Column(blocks), labels, features, list(picked), f"{root} ({split})"))
    label = parts[0][3][1]
    labels_np, names = _labels([v for part in parts for v in part[1]], parts[0][2].get(label), f"{root} ({label})")
    base = root if root.is_dir() else root.parent
    items = []
    for column, _, _, _, where in parts:
        items += [(f"{where} row {i}", lambda c=column, i=i, w=where: _encoded(c(i), base, f"{w} row {i}"))
                  for i in range(len(column))]
    description = {"path": str(root), "files": [[f.relative_to(root).as_posix() if root.is_dir() else f.name,
                                                *file_stamp(f)] for f in files],
                   "columns": parts[0][3], "splits": [len(c) for c, *_ in parts]}
    entry = decode_to_cache(FORMAT, description, items, labels_np, image_size=spec.image_size, channels=spec.channels)
    info = {"columns": {"image": parts[0][3][0], "label": parts[0][3][1]}, "files": len(files),
            "kind": "save_to_disk" if is_saved_dataset(root) else "parquet"}
    return RawData(name=root.stem if root.is_file() else root.name, format=FORMAT, path=str(root),
                   images=entry.images, labels=entry.labels, label_file=f"{root} (column {parts[0][3][1]!r})",
                   num_test=len(parts[1][0]) if len(parts) == 2 else None, class_names=names, info=info,
                   content_sha256=entry.meta.get("content_sha256"), cache_path=entry.path, transformed=True)
