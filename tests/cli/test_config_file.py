"""``--config FILE.toml``: a file's keys give what the same flags give, flags override it, every bad value gets the
flag's own one-line message naming the file and the key, and the resolved config written by train, sample and
eval reads back into the same run."""

import json
import math

import numpy as np
import pytest
import tomllib

from cfgdiff.cli import build_parser, main
from cfgdiff.cli.config_file import RESOLVED_CONFIG_FILE, apply_config_file, resolved_options, to_toml
from cfgdiff.models.presets import default_chunk

PREFIX = "cfgdiff: error: "


def _parse(argv):
    parser = build_parser()
    return parser.parse_args(apply_config_file(parser, argv))


def _write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(capsys, argv):
    """The one error line (without the prefix) of a command that must exit 2."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and "Traceback" not in err, err
    return lines[0][len(PREFIX):]


def _comparable(namespace, skip=()):
    return {k: v for k, v in vars(namespace).items() if k not in ("config", "func", *skip)}


# -- the file gives what the flags give -------------------------------------------------------------------------


@pytest.mark.parametrize("command, toml, flags", [
    (["train"], 'data = "gmm2d"\nsteps = 4000\nbatch-size = 64\np_uncond = 0.2\nautocast = true\n'
                'tf32 = false\nno-progress = true\nchannel-mults = [1, 2, 2]\nattn-levels = []\n',
     ["--data", "gmm2d", "--steps", "4000", "--batch-size", "64", "--p-uncond", "0.2", "--autocast", "--no-tf32",
      "--no-progress", "--channel-mults", "1,2,2", "--attn-levels", "none"]),
    (["sample"], 'run_dir = "runs/x"\nw = [0, 0.3, 1]\nclasses = [3, "cat"]\nsampler = "ddim"\nno-clip = true\n'
                 'seed = -1\nsteps = 16\n',
     ["runs/x", "--w", "0,0.3,1", "--classes", "3,cat", "--sampler", "ddim", "--no-clip", "--seed=-1",
      "--steps", "16"]),
    (["eval"], 'run-dir = "runs/x"\nw = "0,1"\nn = 500\nbootstrap = 0\nguidance = "apg"\napg-beta = -0.5\n',
     ["runs/x", "--w", "0,1", "--n", "500", "--bootstrap", "0", "--guidance", "apg", "--apg-beta=-0.5"]),
    (["report"], 'sweeps = ["a", "b"]\nout = "page.html"\n', ["a", "b", "--out", "page.html"]),
])
def test_file_keys_equal_the_flags(tmp_path, command, toml, flags):
    path = _write(tmp_path, toml)
    assert _comparable(_parse([*command, "--config", str(path)])) == _comparable(_parse([*command, *flags]))


def test_flags_override_the_file_and_tables_override_the_top_level(tmp_path):
    path = _write(tmp_path, 'seed = 5\nbatch-size = 32\np-uncond = 0.3\n[train]\nbatch-size = 64\n'
                            '[sample]\nsteps = 16\nw = [0, 2]\n')
    train = _parse(["train", "--config", str(path), "--seed", "7"])
    assert (train.seed, train.batch_size, train.p_uncond) == (7, 64, 0.3)
    sample = _parse(["sample", "R", "--config", str(path)])  # shared keys it has (seed, batch-size); not p-uncond
    assert (sample.seed, sample.batch_size, sample.steps, sample.w) == (5, 32, 16, [0.0, 2.0])
    assert "steps" in sample.given  # a file's value is an explicit choice, as a flag's
    assert _parse(["sample", "R", "--config", str(path), "--steps", "3"]).steps == 3


def test_a_flag_replaces_the_files_mutually_exclusive_alternative(tmp_path):
    path = _write(tmp_path, "w = [0, 1]\n")
    args = _parse(["sample", "R", "--config", str(path), "--guidance-scale", "2"])
    assert args.w is None and args.guidance_scale == [2.0]


def test_positional_from_the_file_or_the_command_line(tmp_path):
    path = _write(tmp_path, 'run_dir = "from-file"\n')
    assert str(_parse(["sample", "--config", str(path)]).run_dir) == "from-file"
    assert str(_parse(["sample", "--config", str(path), "given"]).run_dir) == "given"


# -- bad files: one line, exit 2, the flag's own message ---------------------------------------------------------


@pytest.mark.parametrize("command, key, toml_value, flag", [
    (["train"], "steps", "0", "--steps=0"),
    (["train"], "steps", "-3", "--steps=-3"),
    (["train"], "steps", '"many"', "--steps=many"),
    (["train"], "steps", "2.5", "--steps=2.5"),
    (["train"], "p-uncond", "1.5", "--p-uncond=1.5"),
    (["train"], "p_uncond", "nan", "--p-uncond=nan"),
    (["train"], "lr", "-inf", "--lr=-inf"),
    (["train"], "logsnr-schedule", '"linear"', "--logsnr-schedule=linear"),
    (["train"], "channel-mults", "[1, 0]", "--channel-mults=1,0"),
    (["train"], "device", '"nonsense"', "--device=nonsense"),
    (["sample", "R"], "w", "[0, nan]", "--w=0,nan"),
    (["sample", "R"], "sampler", '"euler_a"', "--sampler=euler_a"),
    (["sample", "R"], "v-interp", "1.2", "--v-interp=1.2"),
    (["eval", "R"], "batch-size", "0", "--batch-size=0"),
    (["eval", "R"], "guidance", '"magic"', "--guidance=magic"),
])
def test_bad_values_get_the_flags_message_with_file_and_key(capsys, tmp_path, command, key, toml_value, flag):
    os_cwd = tmp_path / "cwd"
    os_cwd.mkdir()
    path = _write(tmp_path, f"{key} = {toml_value}\n")
    from_flag = _error(capsys, [*command, flag])
    from_file = _error(capsys, [*command, "--config", path])
    assert from_file == f"{path}: {key}: {from_flag}"


@pytest.mark.parametrize("toml, needles", [
    ("stepz = 3\n", ["unknown key 'stepz'", "did you mean 'steps'"]),
    ("batch-sise = 3\n", ["'batch-size'"]),
    ("[trian]\nsteps = 3\n", ["[trian]", "did you mean 'train'"]),
    ("[train]\nw = [0, 1]\n", ["unknown key 'w' in [train]"]),
    ("[sample]\nsteps = 3\n", ["no [train] table"]),
    ("steps = \n", ["not valid TOML", "line 1"]),
    ("seed = 1\nsteps = 3\nsteps = 4\n", ["not valid TOML", "line 3"]),
    ("autocast = 1\n", ["autocast", "true or false"]),
    ("no-progress = \"yes\"\n", ["no-progress", "true or false"]),
    ("steps = true\n", ["steps", "takes a value"]),
    ('data = 3\n', ["data", "string"]),
    ('data = ["a", "b"]\n', ["data", "one value"]),
    ("steps = [1, 2]\n", ["steps", "one value"]),
    ('run-dir = ["a", "b"]\n', ["run-dir", "one value"]),
    ("channel-mults = [[1], 2]\n", ["channel-mults", "array items"]),
    ("seed = 1979-05-27\n", ["seed", "takes a value"]),
    ("[train.steps]\nx = 1\n", ["train.steps", "not a table"]),
    ('config = "other.toml"\n', ["config", "another config file"]),
    ("batch-size = 8\nbatch_size = 9\n", ["batch-size and batch_size"]),
])
def test_bad_files_are_one_line_naming_the_file(capsys, tmp_path, toml, needles):
    path = _write(tmp_path, toml)
    message = _error(capsys, ["train", "--config", path])
    assert message.startswith(str(path)), message
    for needle in needles:
        assert needle in message, message


def test_mutually_exclusive_keys_and_unreadable_files(capsys, tmp_path):
    both = _write(tmp_path, "w = [0]\nguidance-scale = [1]\n")
    assert "exclude each other" in _error(capsys, ["sample", "R", "--config", both])
    assert "no file at" in _error(capsys, ["train", "--config", tmp_path / "none.toml"])
    assert "is a directory" in _error(capsys, ["train", "--config", tmp_path])
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"steps = 3\n\xff\xfe\n")
    assert "not UTF-8" in _error(capsys, ["train", "--config", binary])
    # the command line's own errors come first, as without a file
    assert "unrecognized arguments: --frobnicate" in _error(capsys, ["train", "--config", both, "--frobnicate"])


def test_a_bad_file_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, 'data = "gmm2d"\nsteps = 2\nbatch-size = 0\n')
    _error(capsys, ["train", "--config", path, "--run-dir", tmp_path / "run"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]


# -- writing TOML and the resolved config -------------------------------------------------------------------------


def test_to_toml_reads_back_exactly():
    values = {"s": 'a "quoted" \\ back\tslash\nline \x01 \x7f é', "i": -3, "f": 1e-5, "g": 0.1, "big": 1e300,
              "t": True, "n": False, "l": [0.0, 0.3, 1.0], "ls": ["x", "y,z"], "e": [], "inf": math.inf,
              "ninf": -math.inf}
    back = tomllib.loads(to_toml({"sec": values, "other": {"k": 1, "none": None}}, header=["a comment", ""]))
    assert back == {"sec": values, "other": {"k": 1}}
    assert math.isnan(tomllib.loads(to_toml({"x": {"v": math.nan}}))["x"]["v"])


def test_resolved_options_fill_only_what_reads_back():
    parser = build_parser()
    train = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["train"]
    args = parser.parse_args(["train", "--data", "gmm2d"])
    values, unset = resolved_options(args, train, fill={"steps": 12, "model": {"arch": "mlp"}, "lr": "fast"})
    assert values["steps"] == 12 and values["data"] == "gmm2d"
    assert "model" in unset and "lr" in unset  # a dict and a bad value are not taken
    assert "resume" not in values and "overwrite" not in values and "config" not in values


def _train(run_dir, *extra):
    return main(["train", "--run-dir", str(run_dir), "--no-progress", *map(str, extra)])


def test_train_resolved_config_reproduces_the_run(capsys, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    path = _write(tmp_path, 'data = "gmm2d"\nsteps = 2\nbatch-size = 8\n[train]\nlr = 0.004\nema-decay = 0.9\n')
    assert _train(first, "--config", path, "--seed", "3") == 0
    resolved = first / RESOLVED_CONFIG_FILE
    table = tomllib.loads(resolved.read_text())["train"]
    config = json.loads((first / "config.json").read_text())
    for key in ("steps", "batch_size", "lr", "ema_decay", "seed", "warmup_steps", "p_uncond", "log_every"):
        assert table[key.replace("_", "-")] == config[key]  # the run's resolved values, defaults included
    assert _train(second, "--config", resolved) == 0
    assert json.loads((second / "config.json").read_text()) == config
    again = tomllib.loads((second / RESOLVED_CONFIG_FILE).read_text())["train"]
    assert {k: v for k, v in again.items() if k != "run-dir"} == {k: v for k, v in table.items() if k != "run-dir"}
    capsys.readouterr()


def test_sample_and_eval_write_a_config_that_reads_back(capsys, tmp_path, digits_run):
    out = tmp_path / "grid.png"
    argv = ["sample", str(digits_run), "--w", "0,1", "--classes", "2", "--n-per-class", "1", "--steps", "2",
            "--sampler", "ddim", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    first = np.load(out.with_suffix(".npz"))["samples"]
    written = tomllib.loads(out.with_suffix(".toml").read_text())["sample"]
    assert written["w"] == [0.0, 1.0] and written["steps"] == 2 and written["out"] == str(out)
    out.with_suffix(".npz").unlink()
    assert main(["sample", "--config", str(out.with_suffix(".toml"))]) == 0
    assert np.array_equal(np.load(out.with_suffix(".npz"))["samples"], first)

    run_dir = tmp_path / "gmm"
    assert _train(run_dir, "--data", "gmm2d", "--steps", "2", "--batch-size", "8") == 0
    eval_out = tmp_path / "eval"
    assert main(["eval", str(run_dir), "--w", "0", "--n", "6", "--steps", "2", "--bootstrap", "0",
                 "--out", str(eval_out), "--no-progress"]) == 0
    table = tomllib.loads((eval_out / RESOLVED_CONFIG_FILE).read_text())["eval"]
    assert table["n"] == 6 and table["w"] == [0.0] and table["run-dir"] == str(run_dir)
    from_file = _parse(["eval", "--config", str(eval_out / RESOLVED_CONFIG_FILE)])
    assert from_file.given == {"steps", "sampler"}  # a resolved config states every default
    expected = _comparable(_parse(["eval", str(run_dir), "--w", "0", "--n", "6", "--steps", "2", "--bootstrap", "0",
                                   "--out", str(eval_out), "--no-progress"]), ["given"])
    expected["batch_size"] = default_chunk((2,), "cpu")  # the file states the chunk the run resolved
    assert _comparable(from_file, ["given"]) == expected
    capsys.readouterr()


def test_every_list_option_takes_an_array():
    """Arrays go exactly to the options whose type reads a comma-separated list (found by parsing, not by name)."""
    from cfgdiff.cli.config_file import LIST_TYPES, _is_list_type, option_keys

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    found = set()
    for command in sub.choices.values():
        for action in set(option_keys(command).values()):
            if action.type is None or action.nargs is not None:
                continue
            try:
                parsed = action.type("1,2")
            except Exception:  # noqa: BLE001 - any refusal: not a list type
                parsed = None
            reads_a_list = isinstance(parsed, list | tuple) and len(parsed) == 2 or hasattr(parsed, "w_max")
            assert _is_list_type(action) == reads_a_list, action.option_strings
            if reads_a_list:
                found.add(action.type.__qualname__)
    assert found == LIST_TYPES - {"int_list"}  # int_list: a list type of arguments.py no option uses directly
