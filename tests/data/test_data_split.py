"""The held-out split: stratified, disjoint, covering every example, stable across calls, recorded."""

from __future__ import annotations

import numpy as np
import pytest

from cfgdiff.data import DataSpec, load_dataset
from cfgdiff.data.split import heldout_counts, heldout_split, indices_sha256
from tests.data.test_data_formats import make_set, write_folder


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "cache"))


def _labels(sizes, seed=0):
    """Class k repeated sizes[k] times, shuffled (so the split cannot lean on the order)."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(labels)


def test_counts_are_proportional_when_exact():
    # f · n_k is an integer for every class: exactly that many are held out
    assert heldout_counts(np.array([50, 30, 20]), 0.1).tolist() == [5, 3, 2]


def test_counts_largest_remainder():
    # f·n = 0.7, 0.7, 0.6 (total 2.0 -> 2): floors are 0, the two largest remainders (classes 0, 1) get one each
    assert heldout_counts(np.array([7, 7, 6]), 0.1).tolist() == [1, 1, 0]


def test_counts_keep_one_example_per_class_for_training():
    # f = 0.5, sizes 1, 1, 10: total round(6) = 6; singletons are capped at 0, so class 2 gives all six
    assert heldout_counts(np.array([1, 1, 10]), 0.5).tolist() == [0, 0, 6]
    # tiny sets still hold out one example where any class has two
    assert heldout_counts(np.array([2, 1]), 0.1).tolist() == [1, 0]


def test_split_is_stratified_disjoint_covering_and_stable():
    labels = _labels([120, 60, 20])
    train, test = heldout_split(labels, 0.1, seed=3)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert np.bincount(labels[test]).tolist() == [12, 6, 2]
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    again_train, again_test = heldout_split(labels.copy(), 0.1, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    _, other = heldout_split(labels, 0.1, seed=4)
    assert not np.array_equal(test, other)


def test_loaded_split_of_a_folder_without_test_split(tmp_path):
    x, y, _, _ = make_set(3, size=8, per_class=(10, 20, 30))
    root = write_folder(tmp_path / "flat", x, y)
    spec = DataSpec(source=str(root), test_fraction=0.2, split_seed=5)
    train, test, everything = (load_dataset(spec, s) for s in ("train", "test", "all"))
    assert np.bincount(test.labels.numpy()).tolist() == [2, 4, 6]
    assert len(train) + len(test) == len(everything) == 60
    # rows of train and test are exactly the rows of "all", partitioned (images are random, hence distinct)
    rows = {r.tobytes() for r in everything.stored.numpy()}
    train_rows = {r.tobytes() for r in train.stored.numpy()}
    test_rows = {r.tobytes() for r in test.stored.numpy()}
    assert train_rows | test_rows == rows and not train_rows & test_rows
    info = train.source["test_split"]
    assert info == test.source["test_split"]
    assert info["kind"] == "held-out" and info["fraction"] == 0.2 and info["seed"] == 5
    assert info["train"] == 48 and info["test"] == 12
    _, expected_test = heldout_split(everything.labels.numpy(), 0.2, 5)
    assert info["test_indices_sha256"] == indices_sha256(expected_test)
    again = load_dataset(spec, "test")
    assert np.array_equal(again.stored.numpy(), test.stored.numpy())


def test_default_fraction_is_a_tenth(tmp_path):
    assert DataSpec(source="x").test_fraction == 0.1
    x, y, _, _ = make_set(1, size=8, per_class=(20, 20, 20))
    np.savez(tmp_path / "a.npz", x=x, y=y)
    test = load_dataset(str(tmp_path / "a.npz"), "test")
    assert np.bincount(test.labels.numpy()).tolist() == [2, 2, 2]


def test_source_test_split_ignores_the_fraction(tmp_path):
    x, y, xt, yt = make_set(1, size=8)
    np.savez(tmp_path / "a.npz", x=x, y=y, x_test=xt, y_test=yt)
    test = load_dataset(DataSpec(source=str(tmp_path / "a.npz"), test_fraction=0.5), "test")
    assert np.array_equal(test.stored.numpy(), xt) and test.source["test_split"]["kind"] == "source"
