"""Model presets by data shape (cfgdiff.models.presets)."""

from __future__ import annotations

import pytest
import torch

from cfgdiff.models import build_model
from cfgdiff.models.presets import (
    PRESETS,
    SIZES,
    count_parameters,
    default_size,
    family_of,
    preset_for,
    preset_name,
    preset_table,
)

# The configurations existing runs were trained with (runs/digits, runs/fmnist): they must stay what they are.
DIGITS_DEFAULTS = {"steps": 4000, "batch_size": 128, "lr": 2e-3,
                   "model": {"arch": "unet", "base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1}}
FMNIST_DEFAULTS = {"steps": 10000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 500,
                   "model": {"arch": "unet", "base_channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1}}


def test_existing_run_configs_are_presets():
    assert preset_for((1, 8, 8)) == preset_for((1, 8, 8), "base") == DIGITS_DEFAULTS
    assert preset_for((1, 28, 28)) == preset_for((1, 28, 28), "small") == FMNIST_DEFAULTS
    assert 0.715e6 < count_parameters(DIGITS_DEFAULTS["model"], (1, 8, 8)) < 0.725e6  # "0.72M" in the README
    assert preset_name((1, 28, 28)) == "28x28/small" and preset_name((1, 28, 28), device="cuda") == "28x28/base"


def test_families_by_shorter_side():
    cases = {(2,): "vector", (1, 8, 8): "8x8", (1, 12, 30): "8x8", (1, 28, 28): "28x28", (3, 16, 16): "28x28",
             (3, 32, 32): "32x32", (3, 48, 64): "32x32", (3, 64, 64): "64x64", (3, 256, 256): "64x64"}
    for shape, family in cases.items():
        assert family_of(shape) == family, shape
    with pytest.raises(ValueError):
        family_of((1, 2, 3, 4))
    with pytest.raises(ValueError, match="size"):
        preset_for((1, 28, 28), "huge")


def test_defaults_by_device():
    assert default_size((3, 32, 32)) == "small" and default_size((3, 32, 32), "cuda:0") == "base"
    assert default_size((1, 8, 8), "cuda") == "base" and default_size((2,)) == "base"


def test_recipes_follow_ddpm_and_adm():
    for size in ("base", "large"):
        model = preset_for((3, 32, 32), size)["model"]
        assert model["attn_levels"] == [1] and model["dropout"] == 0.1  # attention at 16x16, as DDPM
        assert model["channel_mults"] == [1, 2, 2, 2] and model["num_res_blocks"] == 2
    ddpm = preset_for((3, 32, 32), "large")
    assert ddpm["model"]["base_channels"] == 128 and ddpm["lr"] == 2e-4 and ddpm["batch_size"] == 128
    assert preset_for((3, 64, 64), "large")["model"]["attn_levels"] == [1, 2, 3]  # 32, 16, 8 as ADM


def test_larger_images_get_more_levels_down_to_8x8():
    model = preset_for((3, 128, 128), "base")["model"]
    assert model["channel_mults"] == [1, 1, 2, 3, 4] and model["attn_levels"] == [3, 4]  # still at 16 and 8
    lowest = 128 // 2 ** (len(model["channel_mults"]) - 1)
    assert lowest == 8
    small = preset_for((3, 128, 128), "small")["model"]
    net = build_model({**small, "image_shape": [3, 128, 128], "num_classes": 2})
    z = torch.zeros(1, 3, 128, 128)
    assert net(z, torch.zeros(1), torch.zeros(1, dtype=torch.long)).shape == z.shape


@pytest.mark.parametrize("family", [f for f in PRESETS if f != "vector"])
def test_small_and_base_presets_run_at_their_shape(family):
    shape = {"8x8": (1, 8, 8), "28x28": (1, 28, 28), "32x32": (3, 32, 32), "64x64": (3, 64, 64)}[family]
    for size in ("small", "base"):
        net = build_model({**preset_for(shape, size)["model"], "image_shape": list(shape), "num_classes": 10})
        z = torch.randn(2, *shape)
        assert net(z, torch.zeros(2), torch.tensor([0, 10])).shape == z.shape


def test_table_lists_every_preset_with_growing_sizes():
    rows = preset_table()
    assert len(rows) == len(PRESETS) * len(SIZES)
    for family in PRESETS:
        params = [r["params"] for r in rows if r["family"] == family]
        assert params == sorted(params) and len(set(params)) == 3, family
        assert sum(r["cpu_default"] for r in rows if r["family"] == family) == 1


def test_default_config_takes_the_preset_of_the_data_shape():
    from cfgdiff.training import DATA_DEFAULTS, default_config

    assert default_config("digits").model == DATA_DEFAULTS["digits"]["model"]  # no --model: the built-in defaults
    for size in SIZES:
        assert default_config("digits", size=size).model == preset_for((1, 8, 8), size)["model"]
        assert default_config("gmm2d", size=size).model == preset_for((2,), size)["model"]
        config = default_config("/some/path", data_shape=(3, 32, 32), size=size, steps=7)
        assert config.model == preset_for((3, 32, 32), size)["model"] and config.steps == 7  # flags win
    assert default_config("/p", data_shape=(3, 32, 32), device="cuda").model == preset_for((3, 32, 32), "base")["model"]


def test_train_model_flag_and_knobs(tmp_path, capsys):
    import json

    from cfgdiff.cli import main

    run = tmp_path / "run"
    argv = ["train", "--data", "digits", "--run-dir", str(run), "--steps", "1", "--batch-size", "4", "--no-progress"]
    assert main([*argv, "--model", "small", "--num-res-blocks", "2", "--attn-levels", "none", "--dropout", "0.1"]) == 0
    model = json.loads((run / "config.json").read_text())["model"]
    assert model == {**preset_for((1, 8, 8), "small")["model"], "num_res_blocks": 2, "attn_levels": [], "dropout": 0.1}
    capsys.readouterr()
    # the architecture is the run's: --model cannot change on --resume
    assert main([*argv, "--steps", "2", "--resume", "--model", "large"]) == 2
    assert "--model cannot change on --resume" in capsys.readouterr().err
    # knobs no network can take, or that the data's network does not have: one line, nothing written
    for extra, needle in ((["--attn-levels", "5"], "out of range"), (["--channel-mults", "0,1"], ">= 1"),
                          (["--data", "gmm2d", "--dropout", "0.1"], "trains an mlp")):
        bad = tmp_path / "bad"
        assert main(["train", "--run-dir", str(bad), "--steps", "1", "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and not bad.exists()


def test_train_hflip_flag_reaches_the_loop(tmp_path, capsys):
    import json

    from cfgdiff.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--run-dir", str(run), "--steps", "1", "--batch-size", "4", "--hflip",
                 "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["hflip"] is True
    assert "random flips" in capsys.readouterr().err  # the banner says so
    assert main(["train", "--data", "digits", "--run-dir", str(run), "--steps", "2", "--resume", "--no-hflip"]) == 2
    assert "--hflip cannot change on --resume" in capsys.readouterr().err
    bad = tmp_path / "bad"
    assert main(["train", "--data", "gmm2d", "--run-dir", str(bad), "--steps", "1", "--hflip", "--no-progress"]) == 2
    assert "need image data" in capsys.readouterr().err and not bad.exists()
