"""CIFAR-10 and CIFAR-100, binary version: the archive (``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``)
or its extracted folder.

* CIFAR-10: ``data_batch_1.bin`` … ``data_batch_5.bin`` (training), ``test_batch.bin`` (test) and
  ``batches.meta.txt`` (class names, one per line). Each record is 1 label byte and 3072 pixel bytes: the 32×32
  red plane, then green, then blue, rows top to bottom, which is already the stored [3, 32, 32] layout.
* CIFAR-100: ``train.bin``, ``test.bin``, ``fine_label_names.txt``; each record is a coarse label byte, a fine
  label byte and the 3072 pixel bytes. The fine labels (100 classes) are used.

The folder may also be the one holding ``cifar-10-batches-bin/`` or ``cifar-100-binary/``. The python version
(``cifar-10-python.tar.gz``: ``data_batch_1``, ``batches.meta``, ...) stores its batches as pickles, and cfgdiff
never unpickles a file: it is refused with a message naming the binary version.

Stored: uint8 [N, 3, 32, 32], the training batches in order, then the test batch.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from pathlib import Path

import numpy as np

from cfgdiff.data.dataset import DataError, DataSpec
from cfgdiff.data.source import RawData

FORMAT = "cifar"
PIXELS = 3 * 32 * 32
_SUBFOLDERS = ("cifar-10-batches-bin", "cifar-100-binary")
_PY_MARKERS = ("cifar-10-batches-py", "cifar-100-python")
_PY_FILES = ("data_batch_1", "batches.meta", "test_batch")


def pickled_message(path: Path | str) -> str:
    return (f"{path}: this is the CIFAR python version, whose batches are pickled, and cfgdiff never unpickles a "
            "file; use the binary version instead (cifar-10-binary.tar.gz or cifar-100-binary.tar.gz, from the "
            "same page), as the archive or its extracted folder")


def is_python_version(path: Path) -> bool:
    """A folder of the pickled python version (checked before any other format, so it is never unpickled)."""
    if not path.is_dir():
        return False
    if any((path / m).is_dir() for m in _PY_MARKERS):
        return True
    if any((path / f).is_file() for f in _PY_FILES):
        return True
    return all((path / f).is_file() for f in ("meta", "train", "test")) and (path / "meta").read_bytes()[:1] == b"\x80"


def _folder(path: Path) -> Path:
    for sub in _SUBFOLDERS:
        if (path / sub).is_dir():
            return path / sub
    return path


def detect(path: Path) -> bool:
    """A folder with ``data_batch_1.bin`` or ``train.bin`` + ``test.bin`` (or the archive's sub-folder), or a tar
    archive (read as the CIFAR binary archive; anything else in it is refused when read)."""
    if path.is_dir():
        folder = _folder(path)
        return (folder / "data_batch_1.bin").is_file() or (folder / "train.bin").is_file()
    return path.is_file() and _is_tar(path)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, zlib.error):
        return False


def _label_bytes(name: str) -> int:
    """CIFAR-100 records (train.bin, test.bin) carry a coarse and a fine label byte, CIFAR-10's one label."""
    return 2 if name in ("train.bin", "test.bin") else 1


def _read_tar(path: Path) -> dict[str, object]:
    """The CIFAR member files of a tar archive by base name, in one pass: batch files decoded at once into
    (images, labels) (so only one batch's bytes are held at a time), name lists as bytes."""
    wanted = re.compile(r"(data_batch_\d+|test_batch)\.bin|(train|test)\.bin|batches\.meta\.txt|fine_label_names\.txt")
    out: dict[str, object] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = member.name.split("/")
                if any(m in parts for m in _PY_MARKERS) or (member.isfile() and parts[-1] in _PY_FILES):
                    raise DataError(pickled_message(path))
                if member.isfile() and wanted.fullmatch(parts[-1]):
                    f = tar.extractfile(member)
                    data = f.read() if f is not None else b""
                    name = parts[-1]
                    out[name] = (_records(data, f"{path}/{member.name}", _label_bytes(name))
                                 if name.endswith(".bin") else data)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read the tar archive ({str(err).strip() or type(err).__name__})") from None
    return out


def _records(data: bytes, where: str, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 3, 32, 32], labels int64 [n]) of one batch file; the last label byte is the label."""
    size = label_bytes + PIXELS
    if len(data) == 0 or len(data) % size:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {size}-byte CIFAR records "
                        "(truncated or not a CIFAR binary batch)")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, size)
    images = np.ascontiguousarray(rows[:, label_bytes:]).reshape(-1, 3, 32, 32)
    return images, rows[:, label_bytes - 1].astype(np.int64)


def _names(text: bytes | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(line.strip() for line in text.decode("utf-8", "replace").splitlines() if line.strip())
    return names or None


def read(path: Path, spec: DataSpec) -> RawData:
    """Every row of a CIFAR binary archive or folder: training batches, then the test batch."""
    if is_python_version(path):
        raise DataError(pickled_message(path))
    if path.is_dir():
        folder = _folder(path)
        files: dict[str, object] = {p.name: p for p in folder.iterdir() if p.is_file()}
        where = folder
    else:
        files = _read_tar(path)
        where = path

    def text(name: str) -> bytes | None:
        value = files.get(name)
        return value.read_bytes() if isinstance(value, Path) else value

    def batch(name: str) -> tuple[np.ndarray, np.ndarray] | None:
        value = files.get(name)
        if isinstance(value, Path):
            return _records(value.read_bytes(), f"{where}/{name}", _label_bytes(name))
        return value

    batches = sorted((n for n in files if re.fullmatch(r"data_batch_\d+\.bin", n)),
                     key=lambda n: int(re.findall(r"\d+", n)[0]))
    if batches:  # CIFAR-10
        label_bytes, name, names = 1, "cifar10", _names(text("batches.meta.txt"))
        train_files, test_file, meta = batches, "test_batch.bin", "batches.meta.txt"
    elif "train.bin" in files:  # CIFAR-100
        label_bytes, name, names = 2, "cifar100", _names(text("fine_label_names.txt"))
        train_files, test_file, meta = ["train.bin"], "test.bin", "fine_label_names.txt"
    else:
        raise DataError(f"{where}: no CIFAR binary batches (data_batch_N.bin or train.bin) found")
    parts = []
    for fname in [*train_files, test_file]:
        decoded = batch(fname)
        if decoded is None:
            continue  # no test batch: a held-out split is made instead
        images, labels = decoded
        files.pop(fname, None)  # a decoded tar member is held once, in ``parts``
        if names is not None and labels.max() >= len(names):
            raise DataError(f"{where}/{fname}: label {int(labels.max())} is out of range for the {len(names)} "
                            f"classes named in {meta}")
        parts.append((images, labels))
    has_test = len(parts) > len(train_files)
    num_test = len(parts[-1][1]) if has_test else None
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    del parts
    read_files = [*train_files, *([test_file] if has_test else []), *([meta] if names is not None else [])]
    return RawData(name=name, format=FORMAT, path=str(Path(where).resolve()), images=images, labels=labels,
                   label_file=f"{where}/{train_files[0]}", test_label_file=f"{where}/{test_file}",
                   num_test=num_test, class_names=names,
                   info={"files": read_files, "labels": "fine" if label_bytes == 2 else "label"})
