"""The shared data options (cli/data_options.py) and their wiring into ``cfgdiff train``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cfgdiff.cli import main
from cfgdiff.cli.arguments import Parser, UsageError
from cfgdiff.cli.data_options import add_data_options, data_spec_from_args
from cfgdiff.data import DataSpec
from tests.data.test_data_formats import make_set


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "cache"))


def _spec(argv: list[str]) -> DataSpec:
    parser = Parser(prog="t")
    add_data_options(parser)
    return data_spec_from_args(parser.parse_args(argv))


def test_options_build_the_spec(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("T-shirt/top\nTrouser\n\n")
    spec = _spec(["--data", "hf:/x", "--data-format", "hf", "--image-size", "32", "--channels", "3",
                  "--class-names", str(names), "--test-fraction", "0.2", "--image-column", "img",
                  "--label-column", "fine_label", "--no-hflip"])
    assert spec == DataSpec(source="hf:/x", format="hf", image_size=32, channels=3,
                            class_names=("T-shirt/top", "Trouser"), test_fraction=0.2, image_column="img",
                            label_column="fine_label", hflip=False)
    assert _spec(["--data", "/d", "--class-names", "a, b,c"]).class_names == ("a", "b", "c")
    assert _spec([]) == DataSpec(source="digits")
    assert _spec(["--data", "digits", "--hflip"]) == DataSpec(source="digits", hflip=True)
    assert _spec(["--data", "/d"]).test_fraction == 0.1


@pytest.mark.parametrize("argv", [["--data", "digits", "--image-size", "8"], ["--data", "gmm2d", "--class-names", "a"],
                                  ["--data", "/d", "--class-names", "a,a"], ["--data", "/d", "--test-fraction", "1"],
                                  ["--data", "/d", "--channels", "2"], ["--data", "/d", "--hflip=1"],
                                  ["--data", "/d", "--data-format", "tiff"]])
def test_bad_options_are_usage_errors(argv):
    with pytest.raises(UsageError):
        _spec(argv)


def test_train_refuses_bad_data_in_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    x, y, _, _ = make_set(1, size=8)
    np.savez(bad, x=x, y=y[:-1])
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(bad), "--run-dir", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cfgdiff: error:") and str(bad.resolve()) in err and "\n" not in err
    assert not run_dir.exists()
    assert main(["train", "--data", "digits", "--image-size", "8", "--run-dir", str(run_dir)]) == 2
    assert not run_dir.exists()


def test_train_on_an_npz_records_its_data_spec(tmp_path, capsys):
    x, y, _, _ = make_set(1, size=8, per_class=(6, 6, 6))
    data = tmp_path / "tiny.npz"
    np.savez(data, x=x, y=y)
    run_dir = tmp_path / "run"
    code = main(["train", "--data", str(data), "--class-names", "a,b,c", "--test-fraction", "0.25",
                 "--run-dir", str(run_dir), "--steps", "2", "--batch-size", "4", "--base-channels", "8",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((run_dir / "config.json").read_text())
    spec = DataSpec.from_json(config["data_spec"])
    assert spec == DataSpec(source=str(data), class_names=("a", "b", "c"), test_fraction=0.25)
    from cfgdiff.training import load_model

    model = load_model(run_dir)
    assert model.class_names == ("a", "b", "c") and tuple(model.data_shape) == (1, 8, 8)
