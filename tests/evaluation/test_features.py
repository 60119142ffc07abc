"""Feature networks: the general FeatureClassifier (the shipped digits network is one instance), its loss and
file, which network eval picks, and train-features end to end (through the project's Trainer) into eval."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cfgdiff.evaluation.features import (
    FeatureClassifier,
    FeatureError,
    classifier_accuracy,
    default_classifier_config,
    feature_extractor_for,
    load_digits_classifier,
    load_feature_classifier,
    save_feature_classifier,
    stage_count,
)
from cfgdiff.evaluation.metrics import metric_names
from cfgdiff.training.features import ClassifierLoss, random_shift
from tests.helpers import assert_usage_error, run_cli


@pytest.fixture()
def tiny_npz(tmp_path):
    """A 3-class 1×8×8 data set with a test split, as .npz: class c is bright in row band c (learnable)."""
    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 2 * c:2 * c + 3] += 180
        return x, y

    x, y = make(90)
    x_test, y_test = make(30)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


@pytest.mark.parametrize(("shape", "stages", "final"), [((1, 8, 8), 2, 2), ((1, 28, 28), 3, 3), ((3, 32, 32), 4, 2),
                                                       ((3, 64, 48), 4, 3)])
def test_feature_classifier_scales_with_the_image(shape, stages, final):
    config = default_classifier_config(shape, 7)
    net = FeatureClassifier(**config)
    assert stage_count(shape[1:]) == stages
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.conv) == stages
    x = torch.rand(3, *shape) * 2 - 1
    assert net.conv(x).shape[-1] == final or net.conv(x).shape[-2] == final
    assert net.features(x).shape == (3, config["feature_dim"]) and net(x).shape == (3, 7)
    assert config["feature_dim"] == (64 if min(shape[1:]) <= 16 else 128)


def test_shipped_digits_network_is_an_instance_of_the_feature_classifier():
    extractor = load_digits_classifier()
    assert type(extractor.net).__mro__[0].__name__ in ("FeatureClassifier", "DigitsClassifierNet")
    assert isinstance(extractor.net, FeatureClassifier)
    fresh = FeatureClassifier(**default_classifier_config((1, 8, 8), 10))
    assert set(fresh.state_dict()) == set(extractor.net.state_dict())  # same architecture, same parameter names
    assert extractor.name == "digits-classifier"


def test_random_shift_moves_each_image_by_its_drawn_offset():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    shifted = random_shift(x, torch.Generator().manual_seed(3), 1)
    g = torch.Generator().manual_seed(3)  # the same draws: dx first, then dy
    dx, dy = torch.randint(0, 3, (2,), generator=g), torch.randint(0, 3, (2,), generator=g)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    for i in range(2):
        torch.testing.assert_close(shifted[i], padded[i, :, dy[i]:dy[i] + 5, dx[i]:dx[i] + 5])
    assert torch.equal(random_shift(x, g, 0), x)


def test_classifier_loss_without_smoothing_or_shift_is_cross_entropy():
    net = FeatureClassifier(**default_classifier_config((1, 8, 8), 4)).eval()  # no dropout: deterministic
    x, labels = torch.rand(6, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 3, 0, 1])

    class Batch:
        pass

    batch = Batch()
    batch.x, batch.labels = x, labels
    loss = ClassifierLoss(label_smoothing=0.0, max_shift=0)(net, batch, torch.Generator())
    torch.testing.assert_close(loss, F.cross_entropy(net(x), labels))


def test_feature_network_file_round_trip(tmp_path):
    net = FeatureClassifier(**default_classifier_config((3, 16, 16), 5)).eval()
    save_feature_classifier(net, tmp_path / "features.safetensors", {"data_name": "my-photos", "test_accuracy": 0.5})
    extractor = load_feature_classifier(tmp_path)  # the directory: its features.safetensors
    assert extractor.name == "my-photos-classifier" and extractor.test_accuracy == 0.5
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    feats, probs = extractor(x)
    torch.testing.assert_close(feats, net.features(x))
    torch.testing.assert_close(probs, torch.softmax(net(x), dim=1))
    assert metric_names(extractor.name) == ("FID (my-photos-classifier features)", "IS (my-photos classifier)")
    (tmp_path / "foreign.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FeatureError, match="not a cfgdiff feature-network file"):
        load_feature_classifier(tmp_path / "foreign.safetensors")


def test_feature_extractor_for_picks_in_order(tmp_path, tiny_npz):
    net = FeatureClassifier(**default_classifier_config((1, 8, 8), 3)).eval()
    save_feature_classifier(net, tmp_path / "run" / "features.safetensors", {"data_name": "tiny"})
    with pytest.raises(FeatureError, match="--inception-weights"):  # 1. Inception weights, when given, win
        feature_extractor_for("digits", tmp_path / "missing.pth", tmp_path / "run")
    assert feature_extractor_for(str(tiny_npz), None, tmp_path / "run").name == "tiny-classifier"  # 2. --features
    assert feature_extractor_for("digits").name == "digits-classifier"  # 3. the shipped network
    with pytest.raises(FeatureError, match="cfgdiff train-features --data") as err:  # 4. otherwise: how to get one
        feature_extractor_for(str(tiny_npz))
    assert "\n" not in str(err.value)
    with pytest.raises(FeatureError, match=r"takes images \(1, 8, 8\), the data are \(3, 8, 8\)"):
        feature_extractor_for("x", None, tmp_path / "run", data_shape=(3, 8, 8))


def test_train_features_then_eval_with_it(capsys, tmp_path, tiny_npz, digits_run, cache_dir):
    """train-features on a small labelled set: the recorded held-out accuracy is that of the written network;
    its record names the metrics; a refused input writes nothing. Then eval of a digits run with --features."""
    run_dir = tmp_path / "tiny-features"
    code, stdout, err = run_cli(capsys, ["train-features", "--data", str(tiny_npz), "--run-dir", str(run_dir),
                                        "--steps", "40", "--batch-size", "30", "--no-progress"])
    assert code == 0, err
    assert "held-out test accuracy" in stdout and "FID (tiny-classifier features)" in stdout
    extractor = load_feature_classifier(run_dir)
    from cfgdiff.data import load_dataset

    test = load_dataset(str(tiny_npz), "test")
    record = extractor.metadata
    assert record["test_count"] == 30 and record["data_name"] == "tiny" and record["step"] == 40
    assert record["test_accuracy"] == pytest.approx(classifier_accuracy(extractor.net, test), abs=1e-6)
    assert record["test_accuracy"] > 1 / 3  # the classes are separable: better than chance after 40 steps
    assert json.loads((run_dir / "features-config.json").read_text())["steps"] == 40

    assert_usage_error(capsys, ["train-features", "--data", "gmm2d", "--run-dir", str(tmp_path / "g"),
                                "--no-progress"], "image data")
    assert not (tmp_path / "g").exists()

    digits_features = tmp_path / "digits-features"
    code, _, err = run_cli(capsys, ["train-features", "--data", "digits", "--run-dir", str(digits_features),
                                   "--steps", "5", "--batch-size", "32", "--name", "my-digits", "--no-progress"])
    assert code == 0, err
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, ["eval", str(digits_run), "--features", str(digits_features), "--w", "0",
                                        "--n", "20", "--steps", "2", "--bootstrap", "10", "--grid-per-class", "1",
                                        "--out", str(out), "--no-progress"])
    assert code == 0, err
    assert "FID (my-digits-classifier features)" in stdout and "IS (my-digits classifier)" in stdout
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["fid_name"] == "FID (my-digits-classifier features)"
    assert meta["feature_network"] != load_digits_classifier().cache_key
    assert "--features" in meta["command"]
    # a network for images of another shape is refused, with one line, before anything is written
    rgb = FeatureClassifier(**default_classifier_config((3, 16, 16), 10))
    save_feature_classifier(rgb, tmp_path / "rgb" / "features.safetensors", {"data_name": "rgb"})
    assert_usage_error(capsys, ["eval", str(digits_run), "--features", str(tmp_path / "rgb"), "--n", "20",
                                "--out", str(tmp_path / "eval2"), "--no-progress"], "takes images")
    assert not (tmp_path / "eval2").exists()
