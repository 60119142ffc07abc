"""Sampling and evaluation split across 2 CPU processes (gloo on localhost) give the one-process result.

Why equality is exact, not approximate: rank r runs the chunks j ≡ r (mod 2) of the one-process schedule, each
with the same rows, batch shape and per-sample noise streams (``cfgdiff.sampling.generate.sample_seed``), so every
chunk is the one-process chunk bit for bit; rank 0 gathers them into the one-process order and scores them exactly
as one process does. Any wrong split (a chunk run twice, missed, re-cut or re-ordered; a rank drawing other noise)
changes the samples by far more than 0, and a metric computed per rank or twice changes the files.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cfgdiff.cli import main
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.evaluation.sweep import balanced_labels
from cfgdiff.sampling.generate import iter_samples
from tests.training_support import free_port, run_spawned_group


def test_shards_partition_the_one_process_chunks():
    """The chunks of shards (0, 3), (1, 3), (2, 3), interleaved round by round, are the one-process chunks."""
    mixture = GaussianMixture.three_gaussians()
    labels = balanced_labels(70, mixture.num_classes)  # chunks of 16: 16, 16, 16, 16, 6
    kw = dict(w=1.0, steps=6, seed=5, batch_size=16, dtype=torch.float64)
    whole = list(iter_samples(mixture, labels, **kw))
    shards = [list(iter_samples(mixture, labels, shard=(r, 3), **kw)) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 1]
    interleaved = [shards[j % 3][j // 3] for j in range(len(whole))]
    assert all(torch.equal(a, b) for a, b in zip(interleaved, whole, strict=True))


def test_shard_validation():
    mixture = GaussianMixture.three_gaussians()
    labels = balanced_labels(6, 3)
    with pytest.raises(ValueError, match="needs a seed"):
        next(iter_samples(mixture, labels, steps=2, shard=(0, 2)))
    with pytest.raises(ValueError, match="rank < world_size"):
        next(iter_samples(mixture, labels, steps=2, seed=0, shard=(2, 2)))


def _child(rank, world, ports, commands, out_dir):
    """One rank: runs each ``cfgdiff`` command as torchrun would start it (its environment variables), a fresh
    rendezvous port per command; writes each command's exit code, stdout and stderr to out_dir."""
    torch.set_num_threads(1)
    for (name, argv), port in zip(commands, ports, strict=True):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port), CFGDIFF_CACHE_DIR=str(out_dir / "cache"))
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
        (out_dir / f"{name}.rank{rank}.json").write_text(
            json.dumps({"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}))


def _run_group(commands, out_dir, world=2):
    """``commands`` [(name, argv)] in ``world`` spawned processes; {name: [per-rank record]}. A port taken between
    ``free_port`` and the rendezvous fails or stalls a group: it gets a deadline and one more try."""
    for _attempt in range(2):
        ports = [free_port() for _ in commands]
        if run_spawned_group(_child, world, (world, ports, commands, out_dir)):
            return {name: [json.loads((out_dir / f"{name}.rank{r}.json").read_text()) for r in range(world)]
                    for name, _ in commands}
    raise AssertionError("the 2-process group failed twice")


def _one_process(capsys, monkeypatch, argv, cache):
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(cache))
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _files(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _without_timings(results):
    """results.json without what measures wall time (rank 0 waits for the other rank: other seconds)."""
    meta = {k: v for k, v in results["meta"].items() if k != "seconds"}
    rows = [{k: v for k, v in row.items() if k != "seconds_per_sample"} for row in results["rows"]]
    return results["title"], meta, rows


def test_two_processes_sample_and_evaluate_as_one(capsys, monkeypatch, digits_run, gmm_run, tmp_path):
    gmm_dir, _ = gmm_run
    one, two = tmp_path / "one", tmp_path / "two"
    # chunks: sample 30 rows by 8 -> 8, 8, 8, 6 (the last padded in the gather); gmm eval 110 by 40 -> 40, 40, 30
    # (rank 1 idles in the second round); digits eval 24 by 10 -> 10, 10, 4
    commands = {
        "sample": ["sample", str(digits_run), "--w", "0,2", "--n-per-class", "3", "--steps", "4", "--batch-size",
                   "8", "--seed", "3", "--no-progress"],
        "eval_digits": ["eval", str(digits_run), "--w", "0,1", "--n", "24", "--steps", "3", "--batch-size", "10",
                        "--grid-per-class", "1", "--bootstrap", "5", "--no-progress"],
        "eval_gmm": ["eval", str(gmm_dir), "--w", "2", "--n", "110", "--steps", "8", "--batch-size", "40",
                     "--bootstrap", "2", "--no-progress"],  # the 2-D metrics are the slow part: one w
        # rank 0 alone builds the scorer and stops on bad input: every rank exits 2, rank 0 alone says why
        "bad": ["eval", str(gmm_dir), "--features", str(tmp_path), "--n", "4", "--no-progress"],
    }
    outputs = {"sample": "grid.png", "eval_digits": "eval_digits", "eval_gmm": "eval_gmm", "bad": "eval_bad"}
    records = _run_group([(name, argv + ["--out", str(two / outputs[name])]) for name, argv in commands.items()],
                         two)
    assert [r["code"] for r in records["bad"]] == [2, 2]
    assert records["bad"][0]["stderr"].startswith("cfgdiff: error:") and "not images" in records["bad"][0]["stderr"]
    assert records["bad"][1]["stdout"] == records["bad"][1]["stderr"] == ""
    assert not (two / "eval_bad").exists()
    for name in ("sample", "eval_digits", "eval_gmm"):
        rank0, rank1 = records[name]
        assert rank0["code"] == rank1["code"] == 0, rank0["stderr"]
        assert rank0["stdout"].count("wrote ") == 1
        assert rank1["stdout"] == rank1["stderr"] == ""  # the other rank prints nothing
        stdout = _one_process(capsys, monkeypatch, commands[name] + ["--out", str(one / outputs[name])],
                              one / "cache")
        assert stdout.count("wrote ") == 1

    a, b = np.load(one / "grid.npz"), np.load(two / "grid.npz")
    assert set(a.files) == set(b.files)
    assert np.array_equal(a["samples"], b["samples"])  # bit for bit
    assert all(np.array_equal(a[k], b[k]) for k in a.files)  # labels, w, nfe_per_sample (summed over ranks), ...
    assert a["nfe_per_sample"].tolist() == [4.0, 8.0]
    records = {f"{name}.rank{r}.json" for name in commands for r in (0, 1)}
    assert {p.name for p in two.iterdir()} - records == {p.name for p in one.iterdir()}  # one set of files
    for name in ("eval_digits", "eval_gmm"):
        assert _files(one / name) == _files(two / name)
        results = [json.loads((root / name / "results.json").read_text()) for root in (one, two)]
        assert _without_timings(results[0]) == _without_timings(results[1])  # every metric, exactly
    digits = json.loads((two / "eval_digits" / "results.json").read_text())
    assert digits["rows"][0]["fid"] > 0 and digits["rows"][0]["fid_std"] > 0 and digits["rows"][0]["memorised"] >= 0
    assert [row["nfe_per_sample"] for row in digits["rows"]] == [3.0, 6.0]
    gmm = json.loads((two / "eval_gmm" / "results.json").read_text())
    assert gmm["rows"][0]["sliced_wasserstein"] > 0 and gmm["rows"][0]["log_density"] is not None


def test_torchrun_command(capsys, gmm_run, tmp_path):
    """The documented command, torchrun --nproc_per_node 2 -m cfgdiff sample ...: one set of files, one message,
    the one-process samples."""
    run_dir, _ = gmm_run
    argv = ["sample", str(run_dir), "--w", "0,3", "--n-per-class", "5", "--steps", "6", "--batch-size", "4",
            "--no-progress"]  # 15 rows by 4: chunks 4, 4, 4, 3
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cfgdiff",
         *argv, "--out", str(two / "grid.png")], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, "torchrun failed: " + result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1 and "network evaluations per sample" in result.stdout
    assert main([*argv, "--out", str(tmp_path / "one" / "grid.png")]) == 0
    assert "grid.npz" in {p.name for p in two.iterdir()} == {p.name for p in (tmp_path / "one").iterdir()}
    one = np.load(tmp_path / "one" / "grid.npz")["samples"]
    assert one.shape == (2, 15, 2) and np.array_equal(np.load(two / "grid.npz")["samples"], one)
