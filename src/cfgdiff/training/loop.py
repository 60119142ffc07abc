"""``fit``: drive a ``Trainer`` in a run directory: checkpoints, resume, logs, signals, distribution.

What it does, in order (R processes under torchrun, or one):

1. every rank checks the run directory (nothing is written before all have; see ``check_run_dir``);
2. on resume every rank restores the latest checkpoint (the run directory must be readable by every node);
3. rank 0 creates the directory, writes a step-0 checkpoint (a new run is resumable from its first moment),
   then the resolved config and the data provenance, and opens the log;
4. the loop: ``train_step``; a log line every ``log_every`` steps; a checkpoint every ``checkpoint_every``
   steps, every ``save_every_minutes`` of wall-clock time, at the end, and when a stop was requested;
5. SIGINT/SIGTERM (while ``fit`` runs in the main thread): the current step finishes, a checkpoint is
   written, and ``fit`` returns with ``trainer.interrupted`` set to the signal's name. A second SIGINT
   raises KeyboardInterrupt at once.

Only rank 0 writes files, logs and calls ``on_start``/``on_step``; every rank computes.

``train_or_resume`` is the whole run around ``fit`` that every kind of network shares (the diffusion model,
the noisy classifier, the feature network, distillation): check the directory, on resume read the stored
config and apply the asked changes, validate, load the data (the caller's ``plan``), join the process group,
build the Trainer, ``fit``, leave the group.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfgdiff.runtime.checkpoint import atomic_write_text, pause_point
from cfgdiff.runtime.distributed import DistContext, init_distributed
from cfgdiff.training.budget import TimeBudget
from cfgdiff.training.config import RESUME_FIXED, RESUME_MAY_CHANGE, LoopConfig, apply_resume_changes
from cfgdiff.training.logs import RunLog, require_tensorboard
from cfgdiff.training.rundir import (
    DIFFUSION_LAYOUT,
    RunLayout,
    RunLock,
    check_not_locked,
    check_run_dir,
    drop_future,
    make_run_dir,
    read_stored_config,
    write_checkpoint,
)
from cfgdiff.training.trainer import Trainer, TrainingDiverged

StepHook = Callable[[int, float], None]


def save_run_checkpoint(trainer: Trainer, run_dir: Path, layout: RunLayout = DIFFUSION_LAYOUT) -> None:
    """Write the trainer's checkpoint as the run's latest (collective: call on every rank; rank 0 writes)."""
    data = trainer.state_bytes()
    if data is not None:
        write_checkpoint(Path(run_dir), layout, trainer.step, data, keep=trainer.loop.keep)


class _Signals:
    """SIGINT/SIGTERM ask the trainer to stop after the current step (main thread only)."""

    def __init__(self, trainer: Trainer, enabled: bool) -> None:
        self.trainer, self.previous, self.name = trainer, {}, None
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.name = signal.Signals(signum).name
        self.trainer.stop_requested = True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def fit(
    trainer: Trainer,
    run_dir: str | Path,
    *,
    layout: RunLayout = DIFFUSION_LAYOUT,
    resume: bool = False,
    overwrite: bool = False,
    changed: dict[str, Any] | None = None,
    on_start: Callable[[Trainer], None] | None = None,
    on_step: StepHook | None = None,
    finalize: Callable[[Trainer], None] | None = None,
    handle_signals: bool = True,
    time_budget: TimeBudget | None = None,
) -> Trainer:
    """Train ``trainer`` up to ``trainer.loop.steps`` in ``run_dir``; returns it.

    Rank 0 holds the run directory's lock (``RunLock``) from before its first write to the end, so a second
    trainer of the same directory is refused (``RunDirLocked``) instead of interleaving checkpoints.
    ``time_budget``: the total steps (and the warm-up) are fitted to a wall-clock budget before the first step
    (``cfgdiff.training.budget``; one process only); ``time_budget.chosen`` says what was chosen.

    ``resume``: continue from the run's latest checkpoint (``changed`` — the config fields changed, as
    {name: [old, new]} — goes into the log's resume event, with ``world_size`` when the process count
    differs from the checkpoint's). ``overwrite``: remove an earlier run of this layout first.
    ``on_start(trainer)`` runs once before the first step and ``on_step(step, loss)`` after every step (rank
    0 only); ``finalize(trainer)`` runs on every rank just before the final checkpoint of a run that reached
    its total (e.g. to add held-out metrics to ``trainer.metadata_extra``). ``trainer.interrupted`` is the
    signal's name when SIGINT/SIGTERM stopped the run early, else None.
    """
    loop, ctx = trainer.loop, trainer.dist
    main = ctx.is_main
    run_dir = check_run_dir(run_dir, resume=resume, overwrite=overwrite, layout=layout)
    if loop.tensorboard and main:
        require_tensorboard()
    ctx.barrier()  # every rank has checked before any rank writes
    changed = dict(changed or {})
    if resume:
        trainer.restore(run_dir / layout.checkpoint)
        if trainer.resumed_world_size != ctx.world_size:
            changed["world_size"] = [trainer.resumed_world_size, ctx.world_size]
    ctx.barrier()  # every rank has read the checkpoint before rank 0 touches the directory
    with contextlib.ExitStack() as held:
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(RunLock(run_dir))  # before anything of the run is written or removed
        return _fit_locked(trainer, run_dir, layout=layout, resume=resume, overwrite=overwrite, changed=changed,
                           on_start=on_start, on_step=on_step, finalize=finalize, handle_signals=handle_signals,
                           time_budget=time_budget)


def _fit_locked(trainer: Trainer, run_dir: Path, *, layout: RunLayout, resume: bool, overwrite: bool,
                changed: dict[str, Any], on_start, on_step, finalize, handle_signals: bool,
                time_budget: TimeBudget | None) -> Trainer:
    loop, ctx = trainer.loop, trainer.dist
    main = ctx.is_main
    if main and not resume:
        make_run_dir(run_dir, overwrite=overwrite, layout=layout)
    t_save = time.monotonic()
    if not resume:
        save_run_checkpoint(trainer, run_dir, layout)  # step 0: resumable from the first moment
    t_save = time.monotonic() - t_save if not resume else _checkpoint_seconds(run_dir / layout.checkpoint)
    if time_budget is not None:
        time_budget.plan(trainer, save_seconds=t_save)  # the total steps fitted to the budget, before step 1
    trainer.interrupted = None
    log = None
    signals = _Signals(trainer, handle_signals)
    try:
        if main:
            if resume:
                drop_future(run_dir, layout, trainer.step)
            pause_point("config")
            atomic_write_text(run_dir / layout.config, json.dumps(trainer.config_json(), indent=2) + "\n")
            atomic_write_text(run_dir / layout.provenance,
                              json.dumps(getattr(trainer.dataset, "source", {}), indent=2, default=str) + "\n")
            log = RunLog(run_dir / layout.loss_log, run_dir / layout.tensorboard if loop.tensorboard else None)
            if resume:
                log.write({"event": "resume", "step": trainer.step, "changed": changed})
            if time_budget is not None:
                log.write({"event": "time_budget", "step": trainer.step, **time_budget.chosen})
            if on_start is not None:
                on_start(trainer)
        _loop(trainer, run_dir, layout, log, on_step, finalize, signals, time_budget)
        if main and time_budget is not None:  # the total it ended with (a refit or the deadline may change it)
            atomic_write_text(run_dir / layout.config, json.dumps(trainer.config_json(), indent=2) + "\n")
            if log is not None:
                log.write({"event": "time_budget_end", "step": trainer.step, **time_budget.chosen,
                           "seconds": time.monotonic() - time_budget.started})
    except TrainingDiverged as err:
        if log is not None:
            log.write({"event": "diverged", "step": trainer.step + 1, "reason": str(err)})
        raise
    finally:
        signals.restore()
        if log is not None:
            log.close()
        trainer.stream.close()
    return trainer


@dataclass(frozen=True)
class RunPlan:
    """What a run trains, once its config is resolved and its data loaded (see ``train_or_resume``)."""

    build: Callable[[DistContext], Trainer]  # the Trainer, built after the process group is joined
    finalize: Callable[[Trainer], None] | None = None  # as ``fit``'s: held-out metrics before the last checkpoint


def train_or_resume(
    config: LoopConfig,
    run_dir: str | os.PathLike,
    *,
    plan: Callable[[Any], RunPlan],
    layout: RunLayout = DIFFUSION_LAYOUT,
    fixed: frozenset[str] = RESUME_FIXED,
    read_config: Callable[[dict[str, Any]], LoopConfig] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    resume_changes: dict[str, Any] | None = None,
    on_step: StepHook | None = None,
    on_start: Callable[[Trainer], None] | None = None,
    handle_signals: bool = True,
    time_budget: TimeBudget | None = None,
) -> Trainer:
    """Train (or continue) one run of ``layout`` in ``run_dir``; returns the Trainer at the end.

    A directory another process trains (it holds the ``RunLock``) is refused first (``RunDirLocked``, naming its
    PID), before anything is read or written; ``time_budget`` as ``fit``'s.

    In order: ``check_run_dir``; on resume the latest checkpoint's config (``read_config``, by default
    ``type(config).from_json``) with ``resume_changes`` applied (``apply_resume_changes``: loop options in
    ``RESUME_MAY_CHANGE``, none of ``fixed``; without ``resume_changes``, ``config``'s ``steps`` and ``device``),
    else a copy of ``config`` (the caller's object is not changed); ``validate``; ``plan(config)`` loads and
    checks the data and fills data-dependent defaults (such as ``hflip``) in place, all before anything is
    written; ``init_distributed``; ``plan.build(dist)``; ``fit`` (the config changes go into the log's resume
    event); the process group is left even when training raises.
    """
    if int(os.environ.get("RANK", "0")) == 0:
        check_not_locked(run_dir)  # refused at once, nothing read or written; fit takes the lock itself
    return _train_or_resume(config, run_dir, plan=plan, layout=layout, fixed=fixed, read_config=read_config,
                            resume=resume, overwrite=overwrite, resume_changes=resume_changes, on_step=on_step,
                            on_start=on_start, handle_signals=handle_signals, time_budget=time_budget)


def _train_or_resume(config: LoopConfig, run_dir: str | os.PathLike, *, plan, layout: RunLayout,
                     fixed: frozenset[str], read_config, resume: bool, overwrite: bool,
                     resume_changes: dict[str, Any] | None, on_step, on_start, handle_signals: bool,
                     time_budget: TimeBudget | None) -> Trainer:
    run_dir = check_run_dir(run_dir, resume=resume, overwrite=overwrite, layout=layout)
    changed: dict[str, Any] = {}
    if resume:
        stored, step = read_stored_config(run_dir, layout)
        if resume_changes is None:  # the Python API's older form: the new total and device from ``config``
            resume_changes = {"steps": config.steps, "device": config.device}
        stored_config = (read_config or type(config).from_json)(stored)
        config, changed = apply_resume_changes(stored_config, dict(resume_changes), step=step,
                                               may_change=RESUME_MAY_CHANGE, fixed=fixed)
    else:
        config = copy.deepcopy(config)
    config.validate()
    run_plan = plan(config)
    ctx = init_distributed(config.device)
    try:
        trainer = run_plan.build(ctx)
        return fit(trainer, run_dir, layout=layout, resume=resume, overwrite=overwrite, changed=changed,
                   on_start=on_start, on_step=on_step, finalize=run_plan.finalize, handle_signals=handle_signals,
                   time_budget=time_budget)
    finally:
        ctx.shutdown()


def _checkpoint_seconds(path: Path) -> float:
    """A guess of a checkpoint's write time on resume (nothing was written yet): its size at 200 MB/s."""
    try:
        return path.stat().st_size / 200e6
    except OSError:
        return 0.0


def _loop(trainer: Trainer, run_dir: Path, layout: RunLayout, log: RunLog | None, on_step: StepHook | None,
          finalize: Callable[[Trainer], None] | None, signals: _Signals,
          time_budget: TimeBudget | None = None) -> None:
    loop = trainer.loop
    running, count = 0.0, 0
    t_log, step_log = time.perf_counter(), trainer.step
    t_saved = time.monotonic()
    save_every_s = 60.0 * loop.save_every_minutes
    while trainer.step < loop.steps:
        if log is not None and save_every_s > 0 and time.monotonic() - t_saved >= save_every_s:
            trainer.save_requested = True  # rank 0's clock decides; train_step makes every rank agree
        loss = trainer.train_step()
        if trainer.last_skipped is not None:
            if log is not None:
                log.write({"event": "skipped_nonfinite", "step": trainer.step, "reason": trainer.last_skipped,
                           "skipped": trainer.skipped})
        else:
            running, count = running + loss, count + 1
        if time_budget is not None:
            time_budget.check(trainer)  # may refit loop.steps, or end the run at this step (the deadline)
        if on_step is not None and log is not None:
            on_step(trainer.step, loss)
        finished = trainer.step >= loop.steps
        if trainer.step % loop.log_every == 0 or finished:
            now = time.perf_counter()
            rate = (trainer.step - step_log) / max(now - t_log, 1e-9)
            if log is not None:
                log.write({"step": trainer.step, "loss": running / count if count else math.nan,
                           "lr": trainer.optimizer.param_groups[0]["lr"], "steps_per_sec": rate,
                           "examples_per_sec": rate * loop.batch_size, "skipped": trainer.skipped})
            running, count, t_log, step_log = 0.0, 0, now, trainer.step
        if finished and finalize is not None:
            finalize(trainer)
        if (trainer.step % loop.checkpoint_every == 0 or finished or trainer.save_agreed
                or trainer.stop_agreed):
            save_run_checkpoint(trainer, run_dir, layout)
            t_saved = time.monotonic()
            trainer.save_requested = trainer.save_agreed = False
        if trainer.stop_agreed and not finished:
            trainer.interrupted = signals.name or "stop request"
            if log is not None:
                log.write({"event": "interrupted", "step": trainer.step, "signal": trainer.interrupted})
            return
        pause_point("step")
