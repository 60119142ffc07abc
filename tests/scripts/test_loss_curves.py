"""scripts/loss_curves.py: the paired difference of two loss logs is exactly the offset between them, event
lines are skipped, and each window's mean and standard error are those of its intervals."""

import json
import math
import sys

import numpy as np

from tests.helpers import load_script


def _write_log(path, losses, *, offset=0.0):
    path.mkdir(parents=True)
    lines = [json.dumps({"event": "start", "step": 0})]
    lines += [json.dumps({"step": 10 * (i + 1), "loss": loss + offset, "steps_per_sec": 4.0})
              for i, loss in enumerate(losses)]
    lines.insert(5, json.dumps({"event": "resume", "step": 40}))
    (path / "loss.jsonl").write_text("\n".join(lines) + "\n")


def test_paired_difference_is_the_offset_and_windows_are_interval_means(tmp_path, monkeypatch):
    script = load_script("loss_curves")
    losses = np.random.default_rng(0).uniform(0.05, 0.2, size=60)
    _write_log(tmp_path / "a", losses)
    _write_log(tmp_path / "b", losses, offset=0.003)
    assert sorted(script.read_losses(tmp_path / "a")) == [10 * (i + 1) for i in range(60)]  # events skipped
    out = tmp_path / "cmp"
    monkeypatch.setattr(sys, "argv", ["loss_curves.py", str(tmp_path / "a"), str(tmp_path / "b"),
                                      "--labels", "fp32,bf16", "--windows", "3", "--out", str(out)])
    script.main()
    result = json.loads(out.with_suffix(".json").read_text())
    for k, window in enumerate(result["windows"]):
        part = losses[20 * k:20 * (k + 1)]
        mean, se = window["runs"][0]
        assert math.isclose(mean, part.mean()) and math.isclose(se, part.std(ddof=1) / math.sqrt(20))
        difference, difference_se = window["differences"][0]
        assert math.isclose(difference, 0.003, rel_tol=1e-9) and difference_se < 1e-12
    assert out.with_suffix(".png").stat().st_size > 0 and "bf16 − fp32" in out.with_suffix(".md").read_text()
