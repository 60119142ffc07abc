"""scripts/sweep_table.py: a difference is inside the spread exactly when it is under two combined spreads, and
sweeps of another N or seed are refused (like with like)."""

import json
import math
import sys

import pytest

from tests.helpers import load_script


def _sweep(folder, fid, fid_std, *, n=100, seed=0):
    folder.mkdir(parents=True)
    row = {"w": 1.0, "n": n, "seed": seed, "nfe_per_sample": 32, "fid": fid, "fid_std": fid_std,
           "kid": 0.01, "kid_std": None, "seconds_per_sample": 0.002}
    (folder / "results.json").write_text(json.dumps({"meta": {}, "rows": [row]}))
    return folder


def test_inside_means_under_two_combined_spreads():
    compare = load_script("sweep_table").compare
    spread = math.hypot(0.3, 0.4)  # 0.5
    (name, delta, combined, inside), = compare({"fid": 1.0, "fid_std": 0.3}, {"fid": 1.99, "fid_std": 0.4})
    assert name == "FID" and math.isclose(delta, 0.99) and math.isclose(combined, spread) and inside
    assert not compare({"fid": 1.0, "fid_std": 0.3}, {"fid": 2.01, "fid_std": 0.4})[0][3]
    assert compare({"fid": 1.0, "fid_std": None}, {"fid": 2.0, "fid_std": 0.4}) == []  # no spread: not judged


def test_table_and_like_with_like(tmp_path, monkeypatch, capsys):
    script = load_script("sweep_table")
    a, b = _sweep(tmp_path / "a", 1.0, 0.1), _sweep(tmp_path / "b", 1.1, 0.1)
    out = tmp_path / "t.md"
    monkeypatch.setattr(sys, "argv", ["sweep_table.py", f"fp32={a}", f"bf16={b}", "--out", str(out)])
    script.main()
    text = out.read_text()
    assert "| 1 | bf16 | 32 | 1.100 ± 0.100 |" in text and "1 of 1 differences inside" in text
    c = _sweep(tmp_path / "c", 1.0, 0.1, n=200)
    monkeypatch.setattr(sys, "argv", ["sweep_table.py", f"a={a}", f"c={c}", "--out", str(out)])
    with pytest.raises(SystemExit):
        script.main()
    assert "like with like" in capsys.readouterr().err
