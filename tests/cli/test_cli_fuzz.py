"""Property-based test of the command line (hypothesis): any mix of valid and invalid arguments and config files for
train, sample, eval and info either runs (exit 0) or exits 2 with exactly one line, ``cfgdiff: error: ...``, never
a traceback, and a failed command leaves every file and directory as it was (no new run directory, no half-written
one).

Inputs are drawn so that a valid one is tiny (gmm2d or a tiny digits run, 1 to 3 steps, a few samples): options
with a heavy default (train's steps, sample's steps, eval's n, w and steps) are always given, valid only as small
values. Commands run in-process (``cfgdiff.cli.main``) in a sandbox directory.
"""

import contextlib
import io
import itertools
import math
import os
import shutil

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cfgdiff.cli import main
from cfgdiff.cli.config_file import toml_value
from cfgdiff.training import CHECKPOINT_FILE

PREFIX = "cfgdiff: error:"
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_counter = itertools.count()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, digits_run):
    """A directory with a tiny digits run, a broken run, an empty directory and a plain file."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(digits_run, root / "digits")
    (root / "broken").mkdir()
    data = (digits_run / CHECKPOINT_FILE).read_bytes()
    (root / "broken" / CHECKPOINT_FILE).write_bytes(data[: len(data) // 3])
    (root / "empty").mkdir()
    (root / "afile").write_text("not a run\n")
    return root


def _snapshot(root):
    """Every path under ``root`` with its size, inode and modification time (a rewrite changes them)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            stat = os.lstat(path)
            out[os.path.relpath(path, root)] = (stat.st_size, stat.st_ino, stat.st_mtime_ns) if name in filenames else 0
    return out


def _option(flag, good, bad=()):
    """Mostly absent; else [flag, value] or [flag=value], the value good five times in six (bad otherwise)."""
    choice = st.sampled_from(["absent"] * 10 + (["good"] * 5 if good else []) + (["bad"] if bad else []))
    return choice.flatmap(lambda c: st.just([]) if c == "absent" else st.sampled_from(
        good if c == "good" else bad).flatmap(lambda v: st.sampled_from([[flag, v], [f"{flag}={v}"]])))


def _always(flag, good, bad):
    """[flag=value], the value good nine times in ten: an option whose default would make a long run."""
    return st.sampled_from(["good"] * 9 + ["bad"]).flatmap(
        lambda c: st.sampled_from(good if c == "good" else bad)).map(lambda v: [f"{flag}={v}"])


def _switches(flags):
    return st.lists(st.sampled_from(flags), max_size=2, unique=True)


JUNK = ["--frobnicate", "-x", "--steps", "stray", "--", "--w=", "--config"]


@st.composite
def _toml(draw, pool):
    """The text of a config file: keys drawn from ``pool`` (valid and invalid values), an optional command table,
    or text that is not TOML."""
    kind = draw(st.sampled_from(["keys", "keys", "keys", "garbage"]))
    if kind == "garbage":
        return draw(st.sampled_from(["steps = \n", "[[train]\nx=1", "= 3\n", "w = [0, \n", "\x00", "a = 1\na = 2\n"]))
    keys = draw(st.lists(st.sampled_from(sorted(pool)), max_size=4, unique=True))
    lines = [f"{key} = {toml_value(draw(st.sampled_from(pool[key])))}" for key in keys]
    table = draw(st.sampled_from([None, "train", "sample", "eval", "trian"]))
    if table:
        key = draw(st.sampled_from(sorted(pool)))
        lines += [f"[{table}]", f"{key} = {toml_value(draw(st.sampled_from(pool[key])))}"]
    return "\n".join(lines) + "\n"


TRAIN_TOML = {
    "data": ["gmm2d", "mnist", 3], "batch-size": [8, 0, "x", [1, 2]], "batch_size": [16], "lr": [1e-3, -1.0, math.nan],
    "p_uncond": [0.1, 1.5], "stepz": [3], "autocast": [False, 1], "seed": [1, 1.5, -2], "steps": [2, 0, "x", True],
    "channel-mults": [[1, 2], [], [0]], "ema-decay": [0.9, 2.0], "keep": [1, -1], "log-every": [1, 0],
    "config": ["x.toml"], "device": ["cpu", "cuda:7"],
}
SAMPLE_TOML = {
    "w": [[0, 1], [math.nan], "0,2", [], 1], "guidance-scale": [[1, 2]], "steps": [1, 0, 2.5], "sampler": ["ddim", "x"],
    "n-per-class": [1, 0], "classes": [[0, 3], [10], "cat"], "run_dir": ["digits", "missing"], "no-clip": [True, 1],
    "seed": [-1, "x"], "guidance": ["rescale", "magic"], "rescale-phi": [0.5, 2.0], "out": ["o.png", "o.jpg"],
}
EVAL_TOML = {
    "w": [[0], [math.inf]], "n": [2, 1, "x"], "steps": [1, -1], "bootstrap": [0, 1], "batch-size": [4, 0],
    "run-dir": ["digits", "empty"], "guidance": ["cfg", "auto"], "features": ["missing"], "grid-per-class": [1, 0],
}


def _junk(draw):
    return _switches(JUNK) if draw(st.integers(0, 14)) == 0 else st.just([])


@st.composite
def train_argv(draw):
    groups = [
        _always("--data", ["gmm2d", "gmm2d", "digits"], ["mnist", "no/such/dir", ""]),
        st.sampled_from(range(1000)).map(lambda n: ["--run-dir", f"runs/r{n}"]) if draw(st.integers(0, 3)) else
        _option("--run-dir", ["runs/a", "runs/b"], ["afile", "afile/x", "digits", "broken"]),
        _always("--steps", ["1", "2", "3"], ["0", "-1", "nan", "x", "2.5", "1e3", ""]),
        _option("--batch-size", ["8", "16"], ["0", "-4", "x"]),
        _option("--lr", ["1e-3", "0.01"], ["0", "-1", "nan", "inf", "abc"]),
        _option("--p-uncond", ["0", "0.1", "1"], ["1.5", "-0.1", "nan"]),
        _option("--ema-decay", ["0.9", "0"], ["1", "1.5"]),
        _option("--warmup-steps", ["0", "5"], ["-1"]),
        _option("--grad-clip", ["0", "0.5"], ["-1", "nan"]),
        _option("--log-every", ["1"], ["0"]),
        _option("--model", ["small"], ["huge"]),
        _option("--base-channels", ["8"], ["0"]),
        _option("--channel-mults", ["1,2"], ["0", "a"]),
        _option("--attn-levels", ["none"], ["-1"]),
        _option("--device", ["cpu"], ["cuda:7", "nonsense"]),
        _option("--grad-accum", ["1", "2"], ["0", "3"]),
        _option("--keep", ["0", "1"], ["-1"]),
        _option("--save-every-minutes", ["0"], ["-1", "nan"]),
        _option("--skip-nonfinite", ["2"], ["-1"]),
        _option("--workers", ["0"], ["-1"]),
        _option("--loader", ["memory", "streaming"], ["disk"]),
        _option("--seed", ["0", "7"], ["x"]),
        _switches(["--resume", "--overwrite", "--no-progress", "--no-progress", "--deterministic", "--no-tf32"]),
        _junk(draw),
    ]
    return draw(_assemble(["train"], groups, TRAIN_TOML))


@st.composite
def sample_argv(draw):
    groups = [
        st.sampled_from([["digits"]] * 6 + [["broken"], ["empty"], ["afile"], ["missing"], []]),
        _always("--steps", ["1", "2"], ["0", "x"]),
        _option("--w", ["0", "0,1", "-1"], ["nan", "1,inf", "", "a"]),
        _option("--guidance-scale", ["1", "0,2"], ["x"]),
        _always("--n-per-class", ["1"], ["0", "-1"]),
        _option("--classes", ["0", "0,3"], ["10", "-1", "cat", ","]),
        _option("--sampler", ["ddim", "ancestral"], ["euler_a"]),
        _option("--out", ["out/g.png"], ["out/g.jpg", "empty", "afile/g.png"]),
        _option("--v-interp", ["0.3"], ["1.2"]),
        _option("--eta", ["0.5"], ["-1"]),
        _option("--interval", ["0,1"], ["1,0", "a"]),
        _option("--guidance", ["cfg", "rescale"], ["cfgpp", "magic"]),
        _option("--rescale-phi", ["0.7"], ["2"]),
        _option("--batch-size", ["3"], ["0"]),
        _option("--seed", ["0", "-1"], ["x"]),
        _option("--device", ["cpu"], ["mps"]),
        _option("--null-label", [], ["3"]),
        _switches(["--no-progress", "--no-progress", "--raw-weights", "--no-clip"]),
        _junk(draw),
    ]
    return draw(_assemble(["sample"], groups, SAMPLE_TOML))


@st.composite
def eval_argv(draw):
    groups = [
        st.sampled_from([["digits"]] * 4 + [["broken"], ["empty"], ["missing"], []]),
        _always("--n", ["2", "3"], ["1", "0", "-3", "x"]),
        _always("--w", ["0", "0,1"], ["nan", ""]),
        _always("--steps", ["1"], ["0"]),
        _option("--bootstrap", ["0"], ["1", "-2"]),
        _option("--out", ["out/ev"], ["afile"]),
        _option("--features", [], ["missing", "digits"]),
        _option("--inception-weights", [], ["missing.pth"]),
        _option("--guidance", ["cfg"], ["auto", "classifier"]),
        _option("--sampler", ["ddim"], ["heun_x"]),
        _option("--data", [], ["digits"]),
        _option("--batch-size", ["4"], ["0"]),
        _switches(["--no-progress", "--no-progress", "--raw-weights"]),
        _junk(draw),
    ]
    return draw(_assemble(["eval"], groups, EVAL_TOML))


@st.composite
def info_argv(draw):
    target = draw(st.sampled_from(["digits", "runs/a", "runs/r1", "broken", "empty", "afile", "missing",
                                   f"digits/{CHECKPOINT_FILE}", "digits/config.json"]))
    groups = [st.just([target]), _option("--losses", ["3"], ["0", "x"]), _switches(["--json", "--frobnicate"])]
    return draw(_assemble(["info"], groups, {}))


@st.composite
def _assemble(draw, head, groups, toml_pool):
    parts = [draw(g) for g in groups]
    config = []
    if toml_pool and draw(st.integers(0, 3)) == 0:
        config = [("--config", draw(_toml(toml_pool)))]
    parts = draw(st.permutations(parts))
    argv = [*head, *[token for part in parts for token in part]]
    return argv, config


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@SETTINGS
@given(case=st.one_of(train_argv(), train_argv(), sample_argv(), eval_argv(), info_argv()))
def test_every_input_runs_or_is_one_line_exit_2(sandbox, case):
    argv, config = case
    previous = os.getcwd()
    os.chdir(sandbox)
    try:
        for flag, text in config:
            path = f"cfg-{next(_counter)}.toml"
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            argv = [*argv, flag, path]
        before = _snapshot(sandbox)
        code, _, err = _run(argv)
        # pytest --hypothesis-show-statistics: how many ran, how many were refused (FUZZ_WHY=1: and why)
        event(f"{argv[0]} exit {code}" + (f" {err[:70]}" if os.environ.get("FUZZ_WHY") else ""))
        assert "Traceback" not in err, (argv, err)
        assert code in (0, 2), (argv, code, err)
        if code == 2:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith(PREFIX), (argv, err)
            assert _snapshot(sandbox) == before, argv  # nothing written, nothing half-written
    finally:
        os.chdir(previous)


@pytest.mark.parametrize("argv, needle, code", [
    (["train", "--data", "gmm2d", "--steps", "1", "--run-dir", "afile/x"], "afile is a file, not a directory", 2),
    (["train", "--data", "gmm2d", "--steps", "1", "--run-dir", "afile"], "afile is a file, not a directory", 2),
    (["sample", "digits", "--steps", "1", "--out", "afile/g.png"], "afile is a file, not a directory", 2),
    (["sample", "digits", "--steps", "1", "--out", "empty"], "empty is a directory, not a file", 2),
    (["eval", "digits", "--n", "2", "--steps", "1", "--out", "afile"], "afile is a file, not a directory", 2),
    (["toy", "--w", "0", "--n-per-class", "5", "--steps", "1", "--out", "afile/toy.png"],
     "afile is a file, not a directory", 2),
    (["train-features", "--steps", "1", "--run-dir", "afile/x"], "afile is a file, not a directory", 2),
    (["train-classifier", "--steps", "1", "--run-dir", "afile"], "afile is a file, not a directory", 2),
    (["distill", "digits", "--w-range", "0,1", "--run-dir", "afile/x"], "afile is a file, not a directory", 2),
    (["report", "empty", "--out", "afile/page.html"], "afile is a file, not a directory", 2),
])
def test_a_file_in_the_way_is_one_line(sandbox, argv, needle, code):
    previous = os.getcwd()
    os.chdir(sandbox)
    try:
        before = _snapshot(sandbox)
        got, _, err = _run(argv)
    finally:
        os.chdir(previous)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code and len(lines) == 1 and lines[0].startswith(PREFIX) and needle in lines[0], err
    assert _snapshot(sandbox) == before
