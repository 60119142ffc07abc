"""The decoded-image cache (decode once, invalidate on change, atomic) and the memory budget (memory map)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

import cfgdiff.data.images as images_module
from cfgdiff.data import DataError, DataSpec, load_dataset
from cfgdiff.data.cache import content_sha256, data_cache_dir
from cfgdiff.data.source import DEFAULT_MEMORY_BUDGET, memory_budget
from cfgdiff.runtime.cache import default_cache_dir
from tests.data.test_data_formats import make_set, png_bytes, write_edm_zip, write_folder


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CFGDIFF_DATA_MEMORY_BUDGET", raising=False)


def _entries():
    root = data_cache_dir()
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _no_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the images")

    monkeypatch.setattr(images_module, "decode_image", fail)


def test_cache_dir_rule(monkeypatch, tmp_path):
    monkeypatch.delenv("CFGDIFF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cfgdiff"
    assert data_cache_dir() == tmp_path / "xdg" / "cfgdiff" / "data"
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "mine"))
    assert data_cache_dir() == tmp_path / "mine" / "data"


def test_folder_is_decoded_once(tmp_path, monkeypatch):
    x, y, xt, yt = make_set(3, size=8)
    root = write_folder(tmp_path / "f", x, y, xt, yt)
    first = load_dataset(str(root), "all")
    (entry,) = _entries()
    assert entry.startswith("image-folder-") and first.source["cache"].endswith(entry)
    meta = json.loads((data_cache_dir() / entry / "meta.json").read_text())
    assert meta["content_sha256"] == content_sha256(np.concatenate([x, xt]), np.concatenate([y, yt]))
    _no_decoding(monkeypatch)
    second = load_dataset(str(root), "test")
    assert np.array_equal(second.stored.numpy(), xt) and _entries() == [entry]


def test_cache_is_invalidated_by_changed_files_and_options(tmp_path):
    x, y, _, _ = make_set(1, size=8)
    root = write_folder(tmp_path / "f", x, y)
    load_dataset(str(root), "all")
    assert len(_entries()) == 1
    load_dataset(DataSpec(source=str(root), image_size=4), "all")  # another size: another entry
    assert len(_entries()) == 2
    victim = sorted((root / "cat").iterdir())[0]  # the first image of the first class: row 0
    replacement = 255 - x[0]
    victim.write_bytes(png_bytes(replacement))
    os.utime(victim, ns=(1, 1))  # a changed modification time (here: set back) is a changed file
    d = load_dataset(str(root), "all")
    assert len(_entries()) == 3 and np.array_equal(d.stored[0].numpy(), replacement)


def test_zip_cache_hit(tmp_path, monkeypatch):
    x, y, _, _ = make_set(3, size=8)
    path = write_edm_zip(tmp_path / "d.zip", x, y)
    load_dataset(str(path), "all")
    _no_decoding(monkeypatch)
    assert np.array_equal(load_dataset(str(path), "all").stored.numpy(), x)


def test_no_temporary_entries_are_left(tmp_path):
    x, y, _, _ = make_set(3, size=8)
    load_dataset(str(write_folder(tmp_path / "f", x, y)), "all")
    assert not [name for name in _entries() if name.startswith(".")]


def test_unwritable_cache_decodes_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(blocker))
    x, y, _, _ = make_set(3, size=8)
    d = load_dataset(str(write_folder(tmp_path / "f", x, y)), "all")
    assert np.array_equal(d.stored.numpy(), x) and d.in_memory and d.source["cache"] is None


def test_memory_budget_keeps_large_splits_memory_mapped(tmp_path):
    x, y, xt, yt = make_set(3, size=8)
    root = write_folder(tmp_path / "f", x, y, xt, yt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's not-writable warning is handled
        mapped = load_dataset(str(root), "train", memory_budget=0)
    assert not mapped.in_memory and mapped.source["in_memory"] is False
    assert np.array_equal(mapped.stored.numpy(), x)
    assert np.allclose(mapped.to_x(mapped.stored[[0, 2]]).numpy(), x[[0, 2]] / 127.5 - 1, atol=1e-6)
    resident = load_dataset(str(root), "train")
    assert resident.in_memory and np.array_equal(resident.stored.numpy(), x)


def test_memory_mapped_held_out_split(tmp_path):
    x, y, _, _ = make_set(3, size=8, per_class=(10, 10, 10))
    root = write_folder(tmp_path / "flat", x, y)
    for split in ("train", "test"):
        mapped = load_dataset(str(root), split, memory_budget=0)
        resident = load_dataset(str(root), split)
        assert not mapped.in_memory and resident.in_memory
        assert np.array_equal(mapped.stored.numpy(), resident.stored.numpy())
        assert np.array_equal(mapped.labels.numpy(), resident.labels.numpy())
    (entry,) = [e for e in _entries()]
    assert any(p.name.startswith("heldout-0.1-0") for p in (data_cache_dir() / entry).iterdir())


def test_memory_budget_setting(monkeypatch):
    assert memory_budget() == DEFAULT_MEMORY_BUDGET == 2 * 2**30
    assert memory_budget(123) == 123
    for text, value in (("1000", 1000), ("512M", 512 * 2**20), ("2G", 2 * 2**30), ("3KiB", 3 * 1024)):
        monkeypatch.setenv("CFGDIFF_DATA_MEMORY_BUDGET", text)
        assert memory_budget() == value
    monkeypatch.setenv("CFGDIFF_DATA_MEMORY_BUDGET", "lots")
    with pytest.raises(DataError, match="CFGDIFF_DATA_MEMORY_BUDGET"):
        memory_budget()


def test_provenance_records_what_was_read(tmp_path):
    x, y, _, _ = make_set(3, size=8)
    root = write_folder(tmp_path / "f", x, y)
    (root / "cat" / "notes.txt").write_text("skip me")
    d = load_dataset(DataSpec(source=str(root), class_names=("a", "b", "c")), "train")
    s = d.source
    assert s["format"] == "image-folder" and s["path"] == str(root.resolve()) and s["split"] == "train"
    assert s["count"] == len(d) and s["total"] == len(y) and s["shape"] == [3, 8, 8] and s["num_classes"] == 3
    assert s["skipped_files"] == 1 and s["spec"]["class_names"] == ["a", "b", "c"]
    assert s["content_sha256"] == content_sha256(x, y)
    assert DataSpec.from_json(s["spec"]) == DataSpec(source=str(root), class_names=("a", "b", "c"))
