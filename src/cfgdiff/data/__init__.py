"""Data sets: built-in ones and the user's own files, one ``load_dataset`` for all.

``load_dataset(spec, split)`` takes a ``DataSpec`` or a string (a built-in name, a path, or ``hf:PATH``) and
returns one split ("train", "test" or "all") as a ``Dataset`` (uint8 images converted per batch, see
``cfgdiff.data.dataset``). Nothing is ever downloaded.

Built-in (``builtin.py``): ``digits`` (scikit-learn's 8×8 digits, 10 classes) and ``gmm2d`` (draws of the exact
three-Gaussian testbed). Files, one module per format, the format found from the content (``DataSpec.format``
forces one):

* ``idx`` (``idx.py``): the MNIST family, train-/t10k-images-idx3-ubyte[.gz] and the label files;
* ``cifar`` (``cifar.py``): CIFAR-10/100 binary version, the .tar.gz or its folder;
* ``image-folder`` (``image_folder.py``): ROOT/CLASS/*.png|jpg|..., or ROOT/train/CLASS and ROOT/test/CLASS;
* ``edm-zip`` (``edm_zip.py``): EDM's dataset_tool zip, images plus dataset.json labels;
* ``npz`` (``npz.py``): a NumPy archive with x and y (x_test, y_test, class_names optional);
* ``hf`` (``hf.py``): a Hugging Face save_to_disk folder or parquet files (optional extra ``hf``).

What every format shares (splits, label checks, memory budget, provenance) is in ``source.py``; the held-out
split in ``split.py``; decoding in ``images.py``; the decoded-image cache in ``cache.py``.
"""

from __future__ import annotations

from pathlib import Path

from cfgdiff.data import cifar, edm_zip, hf, idx, image_folder, npz
from cfgdiff.data.builtin import BUILTIN, load_digits, load_gmm2d
from cfgdiff.data.dataset import SPLITS, DataError, Dataset, DataSpec
from cfgdiff.data.source import DEFAULT_MEMORY_BUDGET, MEMORY_BUDGET_ENV, RawData, build_dataset

DATASETS = BUILTIN  # built-in names -> loaders (other data sets are paths)

# format name -> reader module (each has FORMAT, detect(path) and read(path, spec)); in detection order
FORMAT_MODULES = {m.FORMAT: m for m in (idx, cifar, hf, npz, edm_zip, image_folder)}
FORMATS = tuple(FORMAT_MODULES)

__all__ = [
    "DATASETS", "DEFAULT_MEMORY_BUDGET", "FORMATS", "MEMORY_BUDGET_ENV", "SPLITS", "DataError", "DataSpec",
    "Dataset", "detect_format", "load_dataset", "load_digits", "load_gmm2d", "read_source",
]


def _as_spec(spec: DataSpec | str) -> DataSpec:
    spec = spec if isinstance(spec, DataSpec) else DataSpec(source=str(spec))
    spec.validate()
    if spec.format is not None and spec.format not in FORMAT_MODULES:
        raise DataError(f"unknown data format {spec.format!r}; choose from {', '.join(FORMATS)}")
    return spec


def _path_of(spec: DataSpec) -> Path:
    text = spec.source[len(hf.PREFIX):] if spec.source.startswith(hf.PREFIX) else spec.source
    path = Path(text).expanduser()
    if not path.exists():
        if spec.source.startswith(hf.PREFIX) or spec.format == hf.FORMAT:
            raise DataError(hf.hub_name_message(spec.source))
        raise DataError(f"{spec.source}: no such file or directory, and not a built-in data set "
                        f"({', '.join(sorted(BUILTIN))})")
    return path


def _is_pickle(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def detect_format(spec: DataSpec | str) -> str:
    """The format name of a source ("builtin" for a built-in name); ``DataError`` when none fits or the source
    is one cfgdiff refuses (a pickled CIFAR, any pickle)."""
    spec = _as_spec(spec)
    if spec.source in BUILTIN:
        return "builtin"
    path = _path_of(spec)
    if spec.source.startswith(hf.PREFIX):
        return hf.FORMAT
    if spec.format is not None:
        return spec.format
    if cifar.is_python_version(path):
        raise DataError(cifar.pickled_message(path))
    if _is_pickle(path):
        raise DataError(f"{path}: a pickled file, and cfgdiff never unpickles a file; store the data in one of the "
                        f"formats it reads ({', '.join(FORMATS)})")
    if path.is_file() and "ubyte" in path.name and "idx" in path.name:
        raise DataError(f"{path}: an IDX file; give the folder that holds train-images-idx3-ubyte[.gz] and "
                        "train-labels-idx1-ubyte[.gz] (and optionally the t10k- files)")
    for name, module in FORMAT_MODULES.items():
        if module.detect(path):
            return name
    raise DataError(f"{path}: no data format recognised (formats: {', '.join(FORMATS)}; see "
                    "cfgdiff train --help for the layouts)")


def read_source(spec: DataSpec | str) -> RawData:
    """Every row of a file source (both splits), as its format reader finds them."""
    spec = _as_spec(spec)
    fmt = detect_format(spec)
    if fmt == "builtin":
        raise DataError(f"{spec.source} is a built-in data set, not a file source")
    if fmt == cifar.FORMAT and cifar.is_python_version(_path_of(spec)):
        raise DataError(cifar.pickled_message(_path_of(spec)))
    return FORMAT_MODULES[fmt].read(_path_of(spec), spec)


def load_dataset(spec: DataSpec | str, split: str = "train", *, memory_budget: int | None = None) -> Dataset:
    """One split ("train", "test" or "all") of the data set ``spec`` names.

    ``memory_budget`` (bytes; default ``$CFGDIFF_DATA_MEMORY_BUDGET``, else ``DEFAULT_MEMORY_BUDGET`` = 2 GiB):
    a decoded split larger than this stays memory-mapped from the data cache (``Dataset.in_memory`` False).
    Where a source has no test split, "train" and "test" are its stratified held-out split
    (``DataSpec.test_fraction``, default 0.1, ``DataSpec.split_seed``).
    """
    spec = _as_spec(spec)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if spec.source in BUILTIN:
        dataset = BUILTIN[spec.source](split)
        if spec.hflip is not None:
            from dataclasses import replace

            dataset = replace(dataset, hflip_default=spec.hflip,
                              source={**dataset.source, "spec": spec.to_json()})
        return dataset
    return build_dataset(read_source(spec), spec, split, budget=memory_budget)
