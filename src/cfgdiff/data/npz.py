"""NumPy ``.npz`` archives of arrays, read with ``allow_pickle=False`` (an object array is refused, never unpickled).

Arrays: ``x`` images and ``y`` integer labels (required), ``x_test``/``y_test`` (optional, both or neither: the
test split) and ``class_names`` (optional, a string array). ``x`` may be [N, H, W] (grayscale), [N, H, W, C]
or [N, C, H, W] with C in {1, 3} (the last axis is taken as channels when it is 1 or 3); its values either
uint8 (or any integer type) in 0..255, or floats in [-1, 1], which are stored as v = round((x + 1) · 127.5), the
inverse of the stored-to-model map x = v/127.5 - 1: grid values k/127.5 - 1 come back exactly, anything else
is quantised to 8 bits (error at most 1/255).

Stored: uint8 [N, C, H, W], ``x`` then ``x_test``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cfgdiff.data.dataset import DataError, DataSpec
from cfgdiff.data.source import RawData

FORMAT = "npz"


def detect(path: Path) -> bool:
    """A zip archive whose members are all ``.npy`` arrays."""
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """Integer arrays in 0..255 as they are; floats in [-1, 1] as round((x + 1) · 127.5) (see the docstring)."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{where}: integer pixel values must lie in 0..255, found {x.min()}..{x.max()}")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not np.isfinite(x).all():
            raise DataError(f"{where}: pixel values are not all finite")
        if x.size and (x.min() < -1.0 or x.max() > 1.0):
            raise DataError(f"{where}: float pixel values must lie in [-1, 1], found {x.min():g}..{x.max():g}")
        return np.rint((x.astype(np.float64) + 1.0) * 127.5).astype(np.uint8)
    raise DataError(f"{where}: pixel values of dtype {x.dtype} (expected uint8 0..255 or floats in [-1, 1])")


def to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """[N, H, W] / [N, H, W, C] / [N, C, H, W] -> [N, C, H, W] with C in {1, 3}."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    raise DataError(f"{where}: images of shape {list(x.shape)}; expected [N, H, W], [N, H, W, C] or [N, C, H, W] "
                    "with C = 1 or 3")


def _labels(y: np.ndarray, n: int, where: str, x_name: str) -> np.ndarray:
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{where}: labels must be a 1-D integer array, got dtype {y.dtype} shape {list(y.shape)}")
    if len(y) != n:
        raise DataError(f"{where}: {x_name} holds {n} images but its labels hold {len(y)}")
    return y.astype(np.int64)


def read(path: Path, spec: DataSpec) -> RawData:
    """Every row of the archive: ``x`` then ``x_test``."""
    path = path.resolve()
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz archive ({err})") from None
    with archive:
        keys = set(archive.files)
        missing = [k for k in ("x", "y") if k not in keys]
        if missing:
            raise DataError(f"{path}: no array {' or '.join(repr(k) for k in missing)} (an .npz needs x = images and "
                            f"y = labels; it holds {', '.join(sorted(keys)) or 'nothing'})")
        if ("x_test" in keys) != ("y_test" in keys):
            raise DataError(f"{path}: x_test and y_test come together (it holds only one of them)")

        def array(name: str) -> np.ndarray:
            try:
                return archive[name]
            except ValueError as err:  # an object array needs pickle, which is never allowed
                raise DataError(f"{path}: array {name!r} cannot be read without unpickling ({err}); store plain "
                                "numeric (or, for class_names, string) arrays") from None

        xs, ys = [to_nchw(to_uint8(array("x"), f"{path}:x"), f"{path}:x")], [array("y")]
        ys[0] = _labels(ys[0], len(xs[0]), f"{path}:y", "x")
        num_test = None
        if "x_test" in keys:
            x_test = to_nchw(to_uint8(array("x_test"), f"{path}:x_test"), f"{path}:x_test")
            if x_test.shape[1:] != xs[0].shape[1:]:
                raise DataError(f"{path}: x_test images are {list(x_test.shape[1:])}, x images {list(xs[0].shape[1:])}")
            xs.append(x_test)
            ys.append(_labels(array("y_test"), len(x_test), f"{path}:y_test", "x_test"))
            num_test = len(x_test)
        names = None
        if "class_names" in keys:
            raw_names = array("class_names")
            if raw_names.ndim != 1 or raw_names.dtype.kind not in "US":
                raise DataError(f"{path}: class_names must be a 1-D string array, got dtype {raw_names.dtype}")
            names = tuple(str(n.decode() if isinstance(n, bytes) else n) for n in raw_names)
    images = np.ascontiguousarray(np.concatenate(xs)) if len(xs) > 1 else np.ascontiguousarray(xs[0])
    return RawData(name=path.stem, format=FORMAT, path=str(path), images=images, labels=np.concatenate(ys),
                   label_file=f"{path}:y", test_label_file=f"{path}:y_test", num_test=num_test, class_names=names,
                   info={"arrays": sorted(keys)})
