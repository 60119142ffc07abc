"""Every data format from small files the tests write themselves; the same images through every format give the
same stored tensors. Writers here are reused by the other tests/data/test_data_*.py files."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cfgdiff.data import DataSpec, detect_format, load_dataset
from cfgdiff.data.cache import content_sha256

NAMES = ("cat", "dog", "emu")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Every test decodes into its own cache directory."""
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "cache"))


# -- the images --------------------------------------------------------------------------------------------


def make_set(channels: int, *, size: int = 32, per_class=(4, 3, 5), test_per_class=(2, 1, 2), seed: int = 0):
    """(train images uint8 [N, C, H, W], train labels, test images, test labels), each sorted by class, so
    that the class-folder order (class, then file name) is the array order."""
    rng = np.random.default_rng(seed)

    def part(counts):
        labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
        return rng.integers(0, 256, size=(len(labels), channels, size, size), dtype=np.uint8), labels

    x, y = part(per_class)
    x_test, y_test = part(test_per_class)
    return x, y, x_test, y_test


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 [C, H, W] image as PNG (lossless)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


# -- writers ---------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: 0x00 0x00 0x08 ndim, big-endian sizes, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(root: Path, x, y, x_test=None, y_test=None, *, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    files = {"train-images-idx3-ubyte": x[:, 0], "train-labels-idx1-ubyte": y}
    if x_test is not None:
        files.update({"t10k-images-idx3-ubyte": x_test[:, 0], "t10k-labels-idx1-ubyte": y_test})
    for name, array in files.items():
        data = idx_bytes(np.asarray(array, dtype=np.uint8))
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return root


def cifar_records(x, y, *, coarse=None) -> bytes:
    """CIFAR binary records: [coarse byte,] label byte, 3072 pixel bytes (R, G, B planes)."""
    rows = [np.asarray(y, dtype=np.uint8)[:, None]]
    if coarse is not None:
        rows.insert(0, np.asarray(coarse, dtype=np.uint8)[:, None])
    rows.append(x.reshape(len(x), -1))
    return np.concatenate(rows, axis=1).tobytes()


def write_cifar10(root: Path, x, y, x_test=None, y_test=None, names=NAMES, *, batches: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(y)), batches)):
        (root / f"data_batch_{i + 1}.bin").write_bytes(cifar_records(x[part], y[part]))
    if x_test is not None:
        (root / "test_batch.bin").write_bytes(cifar_records(x_test, y_test))
    (root / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return root


def write_cifar_tar(path: Path, folder: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    return path


def write_folder(root: Path, x, y, x_test=None, y_test=None, names=NAMES) -> Path:
    parts = [("train", x, y)] + ([("test", x_test, y_test)] if x_test is not None else [])
    for part, images, labels in parts:
        base = root / part if x_test is not None else root
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = base / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:04d}.png").write_bytes(png_bytes(image))
    return root


def write_edm_zip(path: Path, x, y, *, labels: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        names = []
        for i, image in enumerate(x):
            name = f"{i // 1000:05d}/img{i:08d}.png"
            zf.writestr(name, png_bytes(image))
            names.append(name)
        if labels:
            zf.writestr("dataset.json", json.dumps({"labels": [[n, int(c)] for n, c in zip(names, y, strict=True)]}))
    return path


def write_hf(root: Path, x, y, x_test=None, y_test=None, names=NAMES, *, parquet: bool = False) -> Path:
    datasets = pytest.importorskip("datasets", reason="the hf extra (datasets) is not installed")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})

    def make(images, labels):
        return datasets.Dataset.from_dict(
            {"image": [{"bytes": png_bytes(im), "path": None} for im in images], "label": [int(c) for c in labels]},
            features=features)

    parts = {"train": make(x, y)}
    if x_test is not None:
        parts["test"] = make(x_test, y_test)
    if parquet:
        (root / "data").mkdir(parents=True, exist_ok=True)
        for split, ds in parts.items():
            ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    elif x_test is None:
        parts["train"].save_to_disk(str(root))
    else:
        datasets.DatasetDict(parts).save_to_disk(str(root))
    return root


# -- tests -------------------------------------------------------------------------------------------------


def _all(spec):
    d = load_dataset(spec, "all")
    return d.stored.numpy(), d.labels.numpy(), d


def test_idx_gzipped_and_plain_with_test_split(tmp_path):
    x, y, xt, yt = make_set(1, size=28)
    for gz in (True, False):
        root = write_idx(tmp_path / f"idx{gz}", x, y, xt, yt, gz=gz)
        assert detect_format(str(root)) == "idx"
        train, test = load_dataset(str(root), "train"), load_dataset(str(root), "test")
        assert train.stored.dtype == torch.uint8 and train.data_shape == (1, 28, 28)
        assert np.array_equal(train.stored.numpy(), x) and np.array_equal(train.labels.numpy(), y)
        assert np.array_equal(test.stored.numpy(), xt) and np.array_equal(test.labels.numpy(), yt)
        assert train.class_names == ("0", "1", "2") and not train.hflip_default
        assert train.source["test_split"]["kind"] == "source"


def test_idx_class_names_from_spec(tmp_path):
    x, y, xt, yt = make_set(1, size=28)
    root = write_idx(tmp_path / "idx", x, y, xt, yt)
    d = load_dataset(DataSpec(source=str(root), class_names=NAMES))
    assert d.class_names == NAMES and d.source["class_names_from"] == "spec"


def test_cifar10_folder_and_tar(tmp_path):
    x, y, xt, yt = make_set(3)
    folder = write_cifar10(tmp_path / "cifar", x, y, xt, yt)
    tar = write_cifar_tar(tmp_path / "cifar-10-binary.tar.gz", folder)
    for source in (folder, tar, tmp_path / "outer"):
        if source == tmp_path / "outer":  # the folder holding the extracted cifar-10-batches-bin/
            write_cifar10(source / "cifar-10-batches-bin", x, y, xt, yt)
        assert detect_format(str(source)) == "cifar"
        train, test = load_dataset(str(source), "train"), load_dataset(str(source), "test")
        assert np.array_equal(train.stored.numpy(), x) and np.array_equal(train.labels.numpy(), y)
        assert np.array_equal(test.stored.numpy(), xt) and np.array_equal(test.labels.numpy(), yt)
        assert train.class_names == NAMES and train.name == "cifar10" and train.hflip_default


def test_cifar_record_layout_is_label_then_rgb_planes(tmp_path):
    """One hand-made record: byte 0 the label, then 1024 red, 1024 green, 1024 blue bytes, row-major."""
    rgb = np.zeros((3, 32, 32), dtype=np.uint8)
    rgb[0, 0, 1], rgb[1, 2, 0], rgb[2, 31, 31] = 11, 22, 33
    record = bytes([1]) + rgb.tobytes()
    assert record[1 + 1] == 11 and record[1 + 1024 + 2 * 32] == 22 and record[-1] == 33
    root = tmp_path / "c"
    root.mkdir()
    (root / "data_batch_1.bin").write_bytes(record + bytes([0]) + bytes(3072))
    (root / "batches.meta.txt").write_text("a\nb\n")
    d = load_dataset(str(root), "all")
    assert d.labels.tolist() == [1, 0] and np.array_equal(d.stored[0].numpy(), rgb)


def test_cifar100_uses_fine_labels(tmp_path):
    x, y, xt, yt = make_set(3)
    root = tmp_path / "cifar-100-binary"
    root.mkdir()
    coarse = np.zeros_like(y)
    (root / "train.bin").write_bytes(cifar_records(x, y, coarse=coarse))
    (root / "test.bin").write_bytes(cifar_records(xt, yt, coarse=np.zeros_like(yt)))
    (root / "fine_label_names.txt").write_text("\n".join(NAMES))
    (root / "coarse_label_names.txt").write_text("animal\n")
    d = load_dataset(str(tmp_path), "train")  # the folder holding cifar-100-binary/
    assert d.name == "cifar100" and d.class_names == NAMES
    assert np.array_equal(d.labels.numpy(), y) and np.array_equal(d.stored.numpy(), x)


def test_image_folder_both_layouts_and_skipped_files(tmp_path):
    x, y, xt, yt = make_set(3)
    split_root = write_folder(tmp_path / "split", x, y, xt, yt)
    (split_root / "train" / "cat" / "notes.txt").write_text("not an image")
    (split_root / "README.md").write_text("about")
    train, test = load_dataset(str(split_root), "train"), load_dataset(str(split_root), "test")
    assert np.array_equal(train.stored.numpy(), x) and np.array_equal(test.stored.numpy(), xt)
    assert train.class_names == NAMES and train.source["skipped_files"] == 2 and train.hflip_default
    flat = write_folder(tmp_path / "flat", x, y)
    d = load_dataset(str(flat), "all")
    assert np.array_equal(d.stored.numpy(), x) and d.source["test_split"]["kind"] == "held-out"


def test_image_folder_grayscale_inferred_and_channel_conversion(tmp_path):
    x, y, _, _ = make_set(1)
    root = write_folder(tmp_path / "gray", x, y)
    d = load_dataset(str(root), "all")
    assert d.data_shape == (1, 32, 32) and not d.hflip_default and np.array_equal(d.stored.numpy(), x)
    rgb = load_dataset(DataSpec(source=str(root), channels=3), "all")
    assert rgb.data_shape == (3, 32, 32) and np.array_equal(rgb.stored.numpy(), np.repeat(x, 3, axis=1))


def test_image_size_resizes_shorter_side_and_centre_crops(tmp_path):
    from PIL import Image

    root = tmp_path / "sizes"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    stripes = np.zeros((20, 40), dtype=np.uint8)
    stripes[:, 10:30] = 255  # a white band in the middle 20 columns of a 40x20 (w x h) image
    Image.fromarray(stripes).save(root / "a" / "wide.png")
    Image.fromarray(np.full((10, 10), 7, np.uint8)).save(root / "b" / "small.png")
    d = load_dataset(DataSpec(source=str(root), image_size=10), "all")
    assert d.data_shape == (1, 10, 10)
    # 40x20 -> 20x10, centre crop keeps columns 5..14 of the half-size image: the white band exactly
    assert d.stored[0].float().mean() > 250 and (d.stored[1] == 7).all()


def test_edm_zip(tmp_path):
    x, y, _, _ = make_set(3)
    path = write_edm_zip(tmp_path / "data.zip", x, y)
    assert detect_format(str(path)) == "edm-zip"
    stored, labels, d = _all(str(path))
    assert np.array_equal(stored, x) and np.array_equal(labels, y) and d.hflip_default


def test_npz_layouts_and_float_quantisation(tmp_path):
    x, y, xt, yt = make_set(3)
    layouts = {"nchw": x, "nhwc": x.transpose(0, 2, 3, 1),
               "float": x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)}
    for name, array in layouts.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x=array, y=y, x_test=xt, y_test=yt, class_names=np.array(NAMES))
        assert detect_format(str(path)) == "npz"
        train = load_dataset(str(path), "train")
        assert np.array_equal(train.stored.numpy(), x), name  # floats on the k/127.5 - 1 grid come back exactly
        assert train.class_names == NAMES
        assert np.array_equal(load_dataset(str(path), "test").stored.numpy(), xt)
    gray, gy, _, _ = make_set(1)
    np.savez(tmp_path / "gray.npz", x=gray[:, 0], y=gy)
    assert np.array_equal(load_dataset(str(tmp_path / "gray.npz"), "all").stored.numpy(), gray)


def test_hf_save_to_disk_and_parquet(tmp_path):
    x, y, xt, yt = make_set(3)
    saved = write_hf(tmp_path / "saved", x, y, xt, yt)
    parquet = write_hf(tmp_path / "pq", x, y, xt, yt, parquet=True)
    single = write_hf(tmp_path / "single", x, y)
    for source in (f"hf:{saved}", f"hf:{parquet}", str(saved)):
        train, test = load_dataset(source, "train"), load_dataset(source, "test")
        assert np.array_equal(train.stored.numpy(), x) and np.array_equal(train.labels.numpy(), y), source
        assert np.array_equal(test.stored.numpy(), xt) and train.class_names == NAMES
    d = load_dataset(DataSpec(source=f"hf:{single}", image_column="image", label_column="label"), "all")
    assert np.array_equal(d.stored.numpy(), x) and d.source["test_split"]["kind"] == "held-out"


@pytest.mark.parametrize("channels", [1, 3])
def test_same_images_through_every_format_give_the_same_tensors(tmp_path, channels):
    """All rows (train then test) and labels agree bytewise, and so does the content hash."""
    x, y, xt, yt = make_set(channels)
    x_all, y_all = np.concatenate([x, xt]), np.concatenate([y, yt])
    sources = {
        "image-folder": write_folder(tmp_path / "folder", x, y, xt, yt),
        "edm-zip": write_edm_zip(tmp_path / "edm.zip", x_all, y_all),
        "npz": tmp_path / "arrays.npz",
    }
    np.savez(sources["npz"], x=x, y=y, x_test=xt, y_test=yt)
    if channels == 1:
        sources["idx"] = write_idx(tmp_path / "idx", x, y, xt, yt)
    else:
        sources["cifar"] = write_cifar10(tmp_path / "cifar", x, y, xt, yt)
    if importlib.util.find_spec("datasets") is not None:  # the optional hf extra
        sources["hf"] = f"hf:{write_hf(tmp_path / 'hf', x, y, xt, yt)}"
    expected_hash = content_sha256(x_all, y_all)
    for fmt, source in sources.items():
        stored, labels, d = _all(str(source))
        assert d.source["format"] == fmt
        assert stored.dtype == np.uint8 and np.array_equal(stored, x_all), fmt
        assert np.array_equal(labels, y_all), fmt
        assert d.source["content_sha256"] == expected_hash, fmt


def test_uint8_storage_round_trips_through_to_x(tmp_path):
    """x = v/127.5 - 1 and back: v = round((x + 1) · 127.5) for every byte value."""
    v = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    np.savez(tmp_path / "ramp.npz", x=v, y=np.zeros(1, dtype=np.int64))
    d = load_dataset(str(tmp_path / "ramp.npz"), "all")
    x = d.to_x(d.stored)
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(torch.round((x + 1) * 127.5).to(torch.uint8), d.stored)


def test_forced_format_overrides_detection(tmp_path):
    """A folder holding both IDX files and class folders is IDX by detection, an image folder when forced."""
    x, y, _, _ = make_set(1, size=8)
    root = write_folder(tmp_path / "both", x, y)
    write_idx(root, 255 - x, y)
    assert detect_format(str(root)) == "idx"
    assert np.array_equal(load_dataset(str(root), "all").stored.numpy(), 255 - x)
    forced = load_dataset(DataSpec(source=str(root), format="image-folder"), "all")
    assert np.array_equal(forced.stored.numpy(), x) and forced.class_names == NAMES
    assert forced.source["skipped_files"] == 2  # the two IDX files in ROOT
