"""cfgdiff tune: the search space and objectives, and the command on the 2-D mixture run.

Derived expectations: on a well-trained mixture run the distance to the true conditional distributions (SW_2 to
held-out points) is smallest at w = 0, so the tuned w lies near 0; a study in SQLite resumes without repeating
finished trials, also after its process was killed; two processes on one study share its budget exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfgdiff.tuning.objectives import check_objective, parse_objective
from cfgdiff.tuning.space import parse_search, search_space, split_params
from cfgdiff.tuning.study import TuneSettings
from tests.helpers import assert_usage_error, run_cli

FAST = ["--n-min", "30", "--n-max", "120", "--final-n", "150", "--steps", "6", "--bootstrap", "4",
        "--no-progress"]


def test_search_space_defaults_overrides_and_refusals():
    space = search_space("apg", fixed={"r": 2.5}, overrides={"w": (0.0, 2.0)}, interval=True, steps=(4, 16))
    names = [r.name for r in space]
    assert names == ["w", "eta", "beta", "sigma_lo", "sigma_hi", "steps"]  # r is fixed, so not searched
    assert space[0].high == 2.0 and space[-1].integer and space[3].log
    assert [r.low for r in search_space("cfgpp")] == [-1.0]  # CFG++: w in [-1, 0]
    with pytest.raises(ValueError, match="empty search range"):
        search_space("cfg", overrides={"w": (2.0, 1.0)})
    with pytest.raises(ValueError, match="not searched"):
        search_space("cfg", overrides={"phi": (0.0, 1.0)})
    with pytest.raises(ValueError, match="below"):
        search_space("cfg", interval=True, overrides={"sigma_lo": (0.1, 5.0)})
    with pytest.raises(ValueError, match="unknown guidance"):
        search_space("nope")
    parts = split_params({"w": 1.0, "eta": 0.5, "sigma_lo": 0.1, "sigma_hi": 5.0, "steps": 8}, space)
    assert parts == {"w": 1.0, "params": {"eta": 0.5}, "interval": (0.1, 5.0), "steps": 8}
    assert parse_search("w=0:2, phi=0.1:0.9") == {"w": (0.0, 2.0), "phi": (0.1, 0.9)}
    with pytest.raises(ValueError, match="NAME=LOW:HIGH"):
        parse_search("w=0-2")


def test_objectives_parse_and_read_rows():
    fid = parse_objective("fid")
    assert fid.metrics == ("fid",) and fid.directions == ("minimize",) and not fid.multi
    constrained = parse_objective("precision@recall=0.4")
    assert constrained.directions == ("maximize",) and constrained.constraint == ("recall", 0.4)

    class Row:
        precision, recall, fid = 0.8, 0.3, 5.0

    assert constrained.values(Row()) == (0.8,) and constrained.violation(Row()) == pytest.approx(0.1)
    front = parse_objective("pareto:fid,nfe")
    assert front.metrics == ("fid", "nfe_per_sample") and front.directions == ("minimize", "minimize")
    assert parse_objective("pareto:precision,recall").directions == ("maximize", "maximize")
    for bad in ("fidd", "pareto:fid", "precision@recall=2", "precision@coverage=0.5"):
        with pytest.raises(ValueError):
            parse_objective(bad)
    with pytest.raises(ValueError, match="vector"):
        check_objective(fid, "vectors")
    check_objective(parse_objective("sw"), "vectors")


def test_settings_rungs_and_budget():
    settings = TuneSettings(trials=4, n_min=50, n_max=300, reduction=2)
    assert settings.rungs() == [50, 100, 200, 300] and settings.rungs(multi=True) == [300]
    with pytest.raises(ValueError, match="at least 1 trial"):
        TuneSettings(trials=0)


def test_tune_finds_w_near_zero_on_the_mixture_and_writes_its_outputs(capsys, gmm_run, tmp_path):
    run_dir, _ = gmm_run
    out = tmp_path / "tune"
    code, stdout, err = run_cli(capsys, ["tune", run_dir, "--trials", "8", *FAST, "--out", out])
    assert code == 0, err
    trial_lines = [line for line in stdout.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 8 and all("best so far" in line for line in trial_lines)
    assert "network rows spent against" in stdout and "re-scored at N = 150 on fresh seeds" in stdout
    summary = json.loads((out / "summary.json").read_text())
    best_w = summary["chosen"][0]["params"]["w"]
    assert 0.0 <= best_w < 0.6, best_w  # exact conditionals at w = 0: the distance grows with w
    assert summary["chosen"][0]["rescored"]["seed"] != 0  # the winner re-scored on fresh seeds
    assert 0 < summary["rows_used"] <= summary["rows_without_pruning"]
    for name in ("trials.csv", "trials.md", "front.png", "report.html", "best.toml", "final/results.json"):
        assert (out / name).is_file(), name
    # best.toml is a config both sample and eval take as it is
    code, stdout, err = run_cli(capsys, ["sample", run_dir, "--config", out / "best.toml", "--n-per-class", "2",
                                         "--out", tmp_path / "s.png", "--no-progress"])
    assert code == 0, err
    code, stdout, err = run_cli(capsys, ["eval", "--config", out / "best.toml", "--n", "30", "--bootstrap", "0",
                                         "--out", tmp_path / "e", "--no-progress"])
    assert code == 0, err
    rows = json.loads((tmp_path / "e" / "results.json").read_text())["rows"]
    assert [r["w"] for r in rows] == [pytest.approx(best_w)]


@pytest.mark.parametrize("objective", ["precision@recall=0.5", "pareto:precision,recall"])
def test_fidelity_diversity_objectives_on_the_mixture(capsys, gmm_run, tmp_path, objective):
    """Guidance trades recall for precision on the mixture (the exact guided densities sharpen with w): a recall
    floor keeps the tuned w small, and a front's points are re-scored."""
    run_dir, _ = gmm_run
    out = tmp_path / "tune"
    code, stdout, err = run_cli(capsys, ["tune", run_dir, "--objective", objective, "--trials", "6", *FAST,
                                         "--out", out])
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    chosen = summary["chosen"]
    assert chosen and all("precision" in c["rescored"] for c in chosen)
    if objective.startswith("precision@"):
        rescored = chosen[0]["rescored"]
        trials = {t["trial"]: t for t in summary["trials"]}
        assert trials[chosen[0]["trial"]]["recall"] >= 0.5  # feasible at its own N
        assert rescored["w"] < 2.0, rescored  # recall falls fast with w on the mixture
    else:
        assert (out / "front.png").is_file() and len(chosen) >= 1


def _trials(storage: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def test_a_resumed_tune_keeps_its_finished_trials(capsys, gmm_run, tmp_path):
    run_dir, _ = gmm_run
    out = tmp_path / "tune"
    argv = ["tune", run_dir, *FAST, "--out", out, "--study", "s"]
    assert run_cli(capsys, [*argv, "--trials", "3"])[0] == 0
    storage = f"sqlite:///{out.resolve() / 'study.db'}"
    first = {t.number: (t.params, t.state) for t in _trials(storage, "s")}
    code, stdout, _ = run_cli(capsys, [*argv, "--trials", "5"])
    assert code == 0
    after = {t.number: (t.params, t.state) for t in _trials(storage, "s")}
    assert {k: after[k] for k in first} == first  # nothing finished is run again
    assert len(after) == 5 and sum(line.startswith("trial ") for line in stdout.splitlines()) == 2


def _tune_process(run_dir: Path, out: Path, storage: str, trials: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cfgdiff", "tune", str(run_dir), "--trials", str(trials), *FAST,
                             "--out", str(out), "--storage", storage, "--study", "shared", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_killed_tune_resumes_from_its_storage(capsys, gmm_run, tmp_path):
    import optuna

    run_dir, _ = gmm_run
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _tune_process(run_dir, tmp_path / "a", storage, 40, "--heartbeat", "1", "--n-max", "960")
    deadline = time.monotonic() + 120
    done: list = []
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            trials = _trials(storage, "shared")
        except Exception:  # noqa: BLE001 - the study is not created yet
            continue
        done = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        if len(done) >= 2 and any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(done) >= 2, "the tune did not get going"
    before = {t.number: (t.params, t.state) for t in _trials(storage, "shared")
              if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    time.sleep(3.5)  # past the grace period of 3 heartbeats: the killed process's running trial is stale
    budget = len(before) + 2
    code, _, err = run_cli(capsys, ["tune", run_dir, "--trials", budget, *FAST, "--out", tmp_path / "b",
                                    "--storage", storage, "--study", "shared", "--heartbeat", "1", "--n-max", "960"])
    assert code == 0, err
    trials = _trials(storage, "shared")
    finished = {t.number: (t.params, t.state) for t in trials
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    assert {k: finished[k] for k in before} == before and len(finished) == budget
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)  # the killed one is failed


def test_two_processes_share_one_sqlite_study(gmm_run, tmp_path):
    import optuna

    run_dir, _ = gmm_run
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = _tune_process(run_dir, tmp_path / "a", storage, 6)
    time.sleep(1.0)  # the first creates the study; the second joins it
    second = _tune_process(run_dir, tmp_path / "b", storage, 6)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[1][-500:] for o in outputs]
    finished = [t for t in _trials(storage, "shared")
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 6  # the budget, between them
    ran = [[int(line.split()[1].rstrip(":")) for line in out.splitlines() if line.startswith("trial ")]
           for out, _ in outputs]
    assert sorted(ran[0] + ran[1]) == sorted(t.number for t in finished)  # each trial run by one process, once
    assert ran[0] and ran[1]


@pytest.mark.parametrize("extra, needle", [
    (["--guidance", "nope"], "--guidance"),
    (["--search", "phi=0:1"], "not searched"),
    (["--search", "w=2:1"], "empty search range"),
    (["--storage", "sqlite:////nonexistent/dir/study.db"], "cannot open the study storage"),
    (["--trials", "0"], "at least 1 trial"),
    (["--objective", "fid"], "needs fid"),
    (["--objective", "fidd"], "unknown objective"),
    (["--tune-interval", "--interval", "0.1,2"], "give one"),
])
def test_bad_tunes_are_one_line_and_exit_2(capsys, gmm_run, tmp_path, extra, needle):
    run_dir, _ = gmm_run
    out = tmp_path / "never"
    assert_usage_error(capsys, ["tune", run_dir, *FAST, "--out", out, *extra], needle)
    assert not out.exists()
