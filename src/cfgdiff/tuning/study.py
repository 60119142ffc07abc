"""The tune itself: an Optuna study over a guidance method's parameters, cheap trials first, the winner re-scored.

Each trial draws a setting from the search space (``cfgdiff.tuning.space``), builds its ``GuidedRun`` and scores it
with the sweep's own scorer (``cfgdiff.evaluation.sweep.score_at``, the same samples and metrics as ``cfgdiff
eval``), at the same seed for every trial (common random numbers: differences between trials come from the setting,
not from the draw).

* **Search**: TPE for one objective, NSGA-II for two (Optuna's samplers, seeded); a constraint (``precision@recall=R``)
  is set on the trial (``Trial.set_constraint``: R - recall <= 0 is feasible) and an infeasible trial is never chosen.
* **Cheap trials first** (one objective): a trial is scored at N = ``n_min``, then at N × ``reduction``, ... up to
  ``n_max``, reporting its value at each N to Optuna's ``SuccessiveHalvingPruner`` with N as the resource, which
  stops the trials outside the best 1/``reduction`` of their rung. The network rows spent are counted per trial, so
  the saving is measured: ``rows_used`` against ``rows_without_pruning`` (every finished or pruned trial run through
  all its rungs). Optuna cannot prune a two-objective study; there every trial is scored once, at ``n_max``.
* **Storage**: an Optuna storage URL (default: a SQLite file in the output folder). The study is resumed from it: a
  killed tune's finished trials are kept (a trial that was running when its process died is marked failed by the
  heartbeat and not counted), and several processes or machines on one RDB study share the budget of ``trials``
  finished (complete or pruned) trials between them, each trial run by one of them.
* **No winner's curse**: the chosen setting (one objective: the best feasible trial scored at ``n_max``; two: the
  points of the front) is scored again at ``final_n`` on fresh seeds (``seed + FINAL_SEED_OFFSET``), and that figure,
  with its spread, is the one reported.

This module prints nothing: progress goes to the ``on_trial`` callback.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfgdiff.evaluation.metrics import SampleScorer
from cfgdiff.evaluation.sweep import SweepRow, score_at
from cfgdiff.sampling.pipeline import GuidedRun
from cfgdiff.tuning.objectives import Objective
from cfgdiff.tuning.space import Range, split_params

FINAL_SEED_OFFSET = 1_000_003  # the re-scoring's run seed: seed + this (per-sample streams independent of the trials')
STUDY_FILE = "study.db"
SCORED_FIELDS = ("fid", "fid_std", "kid", "kid_std", "fid_per_class", "precision", "recall", "density", "coverage",
                 "inception_score", "sliced_wasserstein", "sliced_wasserstein_std", "nfe_per_sample")
MakeRun = Callable[[dict[str, Any]], GuidedRun]


class BudgetSpent(Exception):  # noqa: N818 - a signal, not an error: the study's budget is already taken
    """Raised inside a trial that starts after the study's budget is taken by other trials (it is then failed)."""


@dataclass(frozen=True)
class TuneSettings:
    """How long and how finely to tune (module docstring)."""

    trials: int = 20  # finished (complete or pruned) trials in the study, all processes together
    n_min: int = 100  # samples of a trial's first rung
    n_max: int = 400  # samples of its last rung (and of every trial of a two-objective study)
    reduction: int = 2  # N grows by this factor per rung; the pruner keeps the best 1/reduction of each rung
    final_n: int = 1000  # samples of the re-scoring on fresh seeds
    final_points: int = 5  # front points re-scored (two objectives)
    seed: int = 0
    heartbeat: int = 10  # seconds between a running trial's heartbeats (a dead process's trial fails after 3x)

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"the budget must be at least 1 trial, got {self.trials}")
        if not 2 <= self.n_min <= self.n_max:
            raise ValueError(f"need 2 <= n_min <= n_max, got n_min {self.n_min}, n_max {self.n_max}")
        if self.reduction < 2:
            raise ValueError(f"reduction must be >= 2, got {self.reduction}")
        if self.final_n < 2 or self.final_points < 1 or self.heartbeat < 1:
            raise ValueError("final_n must be >= 2, final_points and heartbeat >= 1")

    def rungs(self, multi: bool = False) -> list[int]:
        """The sample counts a trial is scored at: n_min, n_min·r, ... (< n_max), then n_max."""
        if multi:
            return [self.n_max]
        sizes, n = [], self.n_min
        while n < self.n_max:
            sizes.append(n)
            n *= self.reduction
        return [*sizes, self.n_max]


@dataclass
class TrialRecord:
    """One trial as the table shows it."""

    number: int
    state: str  # "complete", "pruned", "running", "failed"
    params: dict[str, Any]
    values: tuple[float, ...] | None  # at the largest N it reached
    n: int  # the largest N it was scored at
    rows: int  # network rows it spent (denoiser rows, all its rungs)
    feasible: bool
    metrics: dict[str, Any] = field(default_factory=dict)  # the scored row's metrics at that N
    seconds: float = 0.0


@dataclass
class FinalScore:
    """A chosen setting re-scored at ``final_n`` on fresh seeds."""

    trial: TrialRecord
    row: SweepRow


@dataclass
class TuneResult:
    objective: Objective
    space: list[Range]
    settings: TuneSettings
    trials: list[TrialRecord]
    chosen: list[TrialRecord]  # the best trial, or the front's points that were re-scored
    final: list[FinalScore]
    rows_used: int
    rows_without_pruning: int
    study_name: str
    storage: str

    @property
    def saved_share(self) -> float:
        """The share of network rows that pruning saved (0 when nothing was pruned)."""
        return 1.0 - self.rows_used / self.rows_without_pruning if self.rows_without_pruning else 0.0


def default_storage(out_dir: str | os.PathLike) -> str:
    """The SQLite file of a tune's output folder as an Optuna storage URL (relative when the folder is, so what a
    tune writes names no machine's absolute path)."""
    return f"sqlite:///{Path(out_dir) / STUDY_FILE}"


def open_storage(url: str, heartbeat: int) -> Any:
    """An Optuna RDB storage with heartbeats (so a killed process's running trial is failed, not left running).
    ValueError (one line) when the URL cannot be opened."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several processes on one file wait for the lock
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna; they are what resuming needs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                              **kwargs)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds; one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot open the study storage {url!r}: {first}") from None


def _state(trial: Any) -> str:
    return str(trial.state.name).lower().replace("fail", "failed")


def _record(trial: Any) -> TrialRecord:
    values = trial.values if trial.values is not None else trial.user_attrs.get("values")
    return TrialRecord(
        number=trial.number, state=_state(trial), params=dict(trial.params),
        values=tuple(values) if values is not None else None, n=int(trial.user_attrs.get("n", 0)),
        rows=int(trial.user_attrs.get("rows", 0)), feasible=float(trial.user_attrs.get("violation", 0.0)) <= 0.0,
        metrics=dict(trial.user_attrs.get("metrics", {})),
        seconds=(trial.duration.total_seconds() if trial.duration is not None else 0.0))


def _metrics(row: SweepRow) -> dict[str, Any]:
    return {k: getattr(row, k) for k in SCORED_FIELDS if getattr(row, k) is not None}


def run_tune(make_run: MakeRun, scorer: SampleScorer, space: Sequence[Range], objective: Objective,
             settings: TuneSettings, *, storage: str, study_name: str,
             on_trial: Callable[[TrialRecord, TrialRecord | None], None] | None = None) -> TuneResult:
    """Tune, resume or join the study ``study_name`` in ``storage`` until it holds ``settings.trials`` finished
    trials, then re-score the chosen setting (module docstring). ``make_run(parts)`` builds the GuidedRun of a
    trial's setting (``parts``: ``cfgdiff.tuning.space.split_params``); ``on_trial(record, best)`` is called in
    this process after each trial it ran."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress is on_trial's; a failed trial is in the table
    db = open_storage(storage, settings.heartbeat)
    directions = list(objective.directions)
    rungs = settings.rungs(objective.multi)

    def new_sampler(seed: int) -> Any:
        if objective.multi:
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, settings.trials // 4)))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, settings.trials // 4)))

    pruner = (optuna.pruners.NopPruner() if objective.multi else
              optuna.pruners.SuccessiveHalvingPruner(min_resource=settings.n_min,
                                                     reduction_factor=settings.reduction))
    try:  # the process that creates the study draws from the seed itself; one joining it draws from its own
        study = optuna.create_study(storage=db, study_name=study_name, directions=directions,
                                    sampler=new_sampler(settings.seed), pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=db, pruner=pruner,
                                  sampler=new_sampler(settings.seed + os.getpid()))
        if [d.name.lower() for d in study.directions] != directions:
            raise ValueError(f"study {study_name!r} in {storage} optimises other objectives "
                             f"({', '.join(d.name.lower() for d in study.directions)}); give another --study") from None
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    counted = (*finished, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)

    budget_taken = [False]

    def objective_fn(trial: Any) -> float | tuple[float, ...]:
        earlier = [t for t in study.get_trials(deepcopy=False, states=counted) if t.number < trial.number]
        if len(earlier) >= settings.trials:
            budget_taken[0] = True
            raise BudgetSpent
        parts = split_params({r.name: r.suggest(trial) for r in space}, space)
        run = make_run(parts)
        rows = 0
        values: tuple[float, ...] = ()
        for n in rungs:
            point = score_at(run, parts["w"], n=n, scorer=scorer, seed=settings.seed)
            assert point is not None  # one process scores its own trials
            rows += int(round(point.row.nfe_per_sample * n))
            values = objective.values(point.row)
            trial.set_user_attr("n", n)
            trial.set_user_attr("rows", rows)
            trial.set_user_attr("nfe_per_sample", point.row.nfe_per_sample)
            trial.set_user_attr("metrics", _metrics(point.row))
            trial.set_user_attr("values", list(values))
            trial.set_user_attr("violation", objective.violation(point.row))
            if not objective.multi:
                trial.report(values[0], step=n)
                if n != rungs[-1] and trial.should_prune():
                    set_constraint(trial, point.row)
                    raise optuna.TrialPruned()
        set_constraint(trial, point.row)
        return values if objective.multi else values[0]

    def set_constraint(trial: Any, row: SweepRow) -> None:
        """The samplers model feasibility from the trial's constraint (<= 0: feasible), set once, at its last N."""
        if objective.constraint is not None:
            trial.set_constraint(objective.constraint[0], objective.violation(row))

    best_so_far: list[TrialRecord | None] = [None]

    def callback(study: Any, frozen: Any) -> None:
        record = _record(frozen)
        if record.state == "failed":
            return
        if (record.state == "complete" and record.feasible and not objective.multi and record.values
                and (best_so_far[0] is None or objective.better(record.values[0], best_so_far[0].values[0]))):
            best_so_far[0] = record
        if on_trial is not None:
            on_trial(record, best_so_far[0])

    while True:
        done = len(study.get_trials(deepcopy=False, states=finished))
        if done >= settings.trials:
            break
        study.optimize(objective_fn, n_trials=1, catch=(BudgetSpent,), callbacks=[callback], gc_after_trial=False)
        if budget_taken[0]:
            break  # the rest of the budget went to other processes' trials

    records = [_record(t) for t in study.get_trials(deepcopy=False)]
    finished_records = [r for r in records if r.state in ("complete", "pruned")]
    rows_used = sum(r.rows for r in finished_records)
    rows_without = 0
    for t in study.get_trials(deepcopy=False, states=finished):
        nfe = float(t.user_attrs.get("nfe_per_sample", 0.0))
        rows_without += int(round(nfe * sum(rungs)))
    chosen = choose(records, objective, settings)
    final = []
    for record in chosen:
        parts = split_params(record.params, space)
        point = score_at(make_run(parts), parts["w"], n=settings.final_n, scorer=scorer,
                         seed=settings.seed + FINAL_SEED_OFFSET)
        assert point is not None
        final.append(FinalScore(record, point.row))
    return TuneResult(objective, list(space), settings, records, chosen, final, rows_used, rows_without,
                      study_name, storage)


def pareto_front(records: Sequence[TrialRecord], objective: Objective) -> list[TrialRecord]:
    """The complete, feasible trials that no other such trial beats in every objective."""
    signs = [1.0 if d == "minimize" else -1.0 for d in objective.directions]
    pool = [r for r in records if r.state == "complete" and r.feasible and r.values]

    def key(r: TrialRecord) -> list[float]:
        return [s * v for s, v in zip(signs, r.values or (), strict=True)]

    front = []
    for r in pool:
        kr = key(r)
        if not any(all(a <= b for a, b in zip(key(o), kr, strict=True)) and key(o) != kr for o in pool):
            front.append(r)
    return sorted(front, key=lambda r: key(r)[0])


def choose(records: Sequence[TrialRecord], objective: Objective, settings: TuneSettings) -> list[TrialRecord]:
    """One objective: the best complete feasible trial (scored at n_max). Two: up to ``final_points`` points of
    the front, spread along it, the knee first (the point nearest the ideal corner, objectives scaled to [0, 1])."""
    if not objective.multi:
        pool = [r for r in records if r.state == "complete" and r.feasible and r.values]
        if not pool:
            return []
        best = pool[0]
        for r in pool[1:]:
            if objective.better(r.values[0], best.values[0]):  # type: ignore[index]
                best = r
        return [best]
    front = pareto_front(records, objective)
    if not front:
        return []
    knee = min(front, key=lambda r: _distance_to_ideal(r, front, objective))
    if len(front) <= settings.final_points:
        picked = front
    else:
        step = (len(front) - 1) / (settings.final_points - 1) if settings.final_points > 1 else 0
        picked = [front[round(i * step)] for i in range(settings.final_points)]
    return [knee, *[r for r in picked if r is not knee]][: settings.final_points]


def _distance_to_ideal(r: TrialRecord, front: Sequence[TrialRecord], objective: Objective) -> float:
    total = 0.0
    for i, direction in enumerate(objective.directions):
        values = [f.values[i] for f in front if f.values]
        lo, hi = min(values), max(values)
        span = hi - lo if hi > lo else 1.0
        value = (r.values or ())[i]
        gap = (value - lo) / span if direction == "minimize" else (hi - value) / span
        total += gap * gap
    return math.sqrt(total)

