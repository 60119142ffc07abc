"""scripts/sample_accuracy.py: per w, the share of samples the feature classifier assigns to their own class."""

import numpy as np
import torch

from cfgdiff.evaluation.features import FeatureClassifier, default_classifier_config, save_feature_classifier
from tests.helpers import load_script


def test_accuracy_per_w_counts_the_classifiers_own_answers(tmp_path, capsys):
    torch.manual_seed(0)
    net = FeatureClassifier(**default_classifier_config((1, 8, 8), 4)).eval()
    save_feature_classifier(net, tmp_path / "feat" / "features.safetensors", {"data_name": "tiny"})
    x = torch.rand(2, 40, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        predicted = net(x[1]).argmax(dim=1)
    labels = predicted.clone()
    labels[:10] = (labels[:10] + 1) % 4  # the second w: exactly 30 of 40 labels are the classifier's answer
    np.savez(tmp_path / "s.npz", samples=x.numpy(), labels=labels.numpy(), w=np.array([0.0, 3.0]))
    module = load_script("sample_accuracy")
    rows = module.accuracy_rows(str(tmp_path / "s.npz"), str(tmp_path / "feat"), batch_size=7)  # chunked
    with torch.no_grad():
        first = float((net(x[0]).argmax(dim=1) == labels).float().mean())
    assert rows[0][:3] == (0.0, 40, first)
    assert rows[1] == (3.0, 40, 0.75, (0.75 * 0.25 / 40) ** 0.5)
    assert module.main([str(tmp_path / "s.npz"), "--features", str(tmp_path / "feat")]) == 0
    out = capsys.readouterr().out
    assert "(chance 0.25)" in out and "| 3 | 40 | 0.750 ± 0.068 |" in out
