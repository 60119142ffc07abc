"""Every bad input is one ``DataError`` line that names the file, from files the tests make themselves."""

from __future__ import annotations

import gzip
import json
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from cfgdiff.data import DataError, DataSpec, load_dataset
from tests.data.test_data_formats import (
    cifar_records,
    idx_bytes,
    make_set,
    png_bytes,
    write_cifar10,
    write_edm_zip,
    write_folder,
    write_hf,
    write_idx,
)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "cache"))


def _error(spec, *needles, split="train") -> str:
    with pytest.raises(DataError) as info:
        load_dataset(spec, split)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert str(needle) in message, (needle, message)
    return message


@pytest.fixture
def gray():
    return make_set(1, size=28)


def test_idx_wrong_magic(tmp_path, gray):
    root = write_idx(tmp_path / "idx", *gray)
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + bytes(100)))
    _error(str(root), "train-images-idx3-ubyte.gz", "magic")


def test_idx_truncated(tmp_path, gray):
    root = write_idx(tmp_path / "idx", *gray, gz=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    _error(str(root), path, "truncated")
    path.write_bytes(b"\x00\x00\x08\x03\x00")  # the header itself cut short
    _error(str(root), path, "truncated")


def test_idx_counts_differ(tmp_path, gray):
    x, y, xt, yt = gray
    root = write_idx(tmp_path / "idx", x, y, xt, yt)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(yt[:-1].astype(np.uint8))))
    _error(str(root), "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "labels")


def test_labels_out_of_range(tmp_path, gray):
    x, y, xt, yt = gray
    root = write_idx(tmp_path / "idx", x, y, xt, yt)
    _error(DataSpec(source=str(root), class_names=("a", "b")), "train-labels-idx1-ubyte.gz", "out of range")
    bad = np.where(yt == 2, 7, yt)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(bad.astype(np.uint8))))
    _error(str(root), "t10k-labels-idx1-ubyte.gz", "label 7", "out of range")
    np.savez(tmp_path / "neg.npz", x=x, y=np.where(y == 0, -1, y))
    _error(str(tmp_path / "neg.npz"), "neg.npz:y", "label -1")


def test_class_without_images(tmp_path, gray):
    x, y, _, _ = gray
    np.savez(tmp_path / "a.npz", x=x, y=y, class_names=np.array(["a", "b", "c", "d"]))
    _error(str(tmp_path / "a.npz"), "a.npz", "class 3 ('d') has no training images")
    root = write_folder(tmp_path / "folder", x, y)
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    _error(str(root), root / "empty", "no images")


def test_folder_without_class_subfolders(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "one.png").write_bytes(png_bytes(np.zeros((1, 4, 4), np.uint8)))
    _error(str(root), root, "no class sub-folders")


def test_corrupt_image_is_named(tmp_path, gray):
    x, y, _, _ = gray
    root = write_folder(tmp_path / "folder", x, y)
    bad = root / "dog" / "9999.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _error(str(root), bad, "image")
    cut = png_bytes(x[0])
    bad.write_bytes(cut[: len(cut) // 2])  # a valid header, the pixel data cut short
    _error(str(root), bad)
    assert not list((tmp_path / "cache").rglob("images.npy"))  # nothing half-written is left in the cache


def test_zip_without_labels(tmp_path, gray):
    x, y, _, _ = gray
    path = write_edm_zip(tmp_path / "unlabelled.zip", x, y, labels=False)
    _error(str(path), path, "dataset.json")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("dataset.json", json.dumps({"labels": None}))
    _error(str(path), path, "dataset.json")


def test_zip_image_without_label(tmp_path, gray):
    x, y, _, _ = gray
    path = write_edm_zip(tmp_path / "d.zip", x, y)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("extra/img.png", png_bytes(x[0]))
    _error(str(path), "extra/img.png", "no label")


def test_npz_missing_arrays_and_mismatched_lengths(tmp_path, gray):
    x, y, _, _ = gray
    np.savez(tmp_path / "nox.npz", images=x, y=y)
    _error(str(tmp_path / "nox.npz"), "nox.npz", "'x'")
    np.savez(tmp_path / "short.npz", x=x, y=y[:-1])
    _error(str(tmp_path / "short.npz"), "short.npz", f"{len(x)} images", f"{len(y) - 1}")
    np.savez(tmp_path / "half.npz", x=x, y=y, x_test=x)
    _error(str(tmp_path / "half.npz"), "half.npz", "x_test and y_test")


def test_npz_object_array_is_never_unpickled(tmp_path, gray):
    x, y, _, _ = gray
    np.savez(tmp_path / "obj.npz", x=x, y=y, class_names=np.array(["a", "b", None], dtype=object))
    _error(str(tmp_path / "obj.npz"), "obj.npz", "class_names", "unpickling")


def test_pickled_cifar_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    # a stand-in pickle (never loaded): the refusal happens before any file is opened
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": [1, 2, 3]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"]}))
    for source in (folder, tmp_path):
        _error(str(source), "python version", "cifar-10-binary.tar.gz")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    _error(str(archive), archive, "binary")
    single = tmp_path / "stray.pkl"
    single.write_bytes(pickle.dumps([1, 2]))
    _error(str(single), single, "pickled")


def test_cifar_truncated_record_file(tmp_path):
    x, y, _, _ = make_set(3)
    root = write_cifar10(tmp_path / "c", x, y)
    (root / "data_batch_2.bin").write_bytes(cifar_records(x[:2], y[:2])[:-100])
    _error(str(root), "data_batch_2.bin", "3073-byte")


def test_mixed_sizes_without_image_size(tmp_path):
    from PIL import Image

    for name, size in (("a", (8, 8)), ("b", (9, 8))):
        (tmp_path / "mixed" / name).mkdir(parents=True)
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(tmp_path / "mixed" / name / "im.png")
    _error(str(tmp_path / "mixed"), "8x8", "9x8", "image-size")
    assert load_dataset(DataSpec(source=str(tmp_path / "mixed"), image_size=8), "all").data_shape == (1, 8, 8)


def test_missing_path_and_hub_names(tmp_path):
    _error(str(tmp_path / "nope"), tmp_path / "nope", "no such file")
    _error("hf:fashion_mnist", "hf:fashion_mnist", "save_to_disk", "never downloads")


def test_bad_spec_values(tmp_path, gray):
    root = write_idx(tmp_path / "idx", *gray)
    _error(DataSpec(source=str(root), format="tiff-stack"), "tiff-stack", "idx")
    _error(DataSpec(source=str(root), test_fraction=1.0), "test_fraction")
    _error(DataSpec(source=str(root), channels=2), "channels")


def test_hf_missing_column(tmp_path):
    x, y, _, _ = make_set(3)
    root = write_hf(tmp_path / "hf", x, y)
    _error(DataSpec(source=f"hf:{root}", label_column="fine"), "no column 'fine'", "--label-column")


def test_unrecognised_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    _error(str(path), path, "no data format recognised")


def test_corrupt_image_in_hf_set_is_named(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the hf extra (datasets) is not installed")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b"not a png", "path": None}], "label": [0]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "hf"))
    _error(f"hf:{tmp_path / 'hf'}", "row 0", "image")


def test_single_idx_file_asks_for_its_folder(tmp_path, gray):
    root = write_idx(tmp_path / "idx", *gray)
    _error(str(root / "train-images-idx3-ubyte.gz"), "train-images-idx3-ubyte.gz", "give the folder")
