"""Run directories: which files a run writes, checking a directory before anything is written, and
checkpoints that survive SIGKILL.

Layout of a diffusion run (``DIFFUSION_LAYOUT``; other kinds of network use their own names, so that, e.g.,
a noisy classifier can share the directory)::

    RUN_DIR/config.json                           the resolved TrainConfig (rewritten on --resume with changes)
    RUN_DIR/data.json                             data provenance: the data set's ``source`` record
    RUN_DIR/loss.jsonl                            one JSON object per log interval, plus event lines
    RUN_DIR/checkpoint.safetensors                the LATEST checkpoint: what load_model and --resume read
    RUN_DIR/checkpoint-step-00001000.safetensors  the last K (--keep) checkpoints by step
    RUN_DIR/tensorboard/                          TensorBoard events (--tensorboard)

A checkpoint is written once, to ``checkpoint-step-N.safetensors`` (temp file, fsync, rename, fsync of the
directory); the latest name is then pointed at it by a hard link made under a temporary name and renamed
over ``checkpoint.safetensors`` (a copy where hard links are not supported), and only then are the oldest
step files pruned. Every rename is atomic, so at any instant ``checkpoint.safetensors`` is a complete
checkpoint: the previous one or the new one. With ``keep == 0`` the latest is written directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfgdiff.runtime.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    fsync_directory,
    pause_point,
    read_metadata,
)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (holds another run, or holds none to resume)."""


@dataclass(frozen=True)
class RunLayout:
    """The file names of one kind of run inside a run directory."""

    checkpoint: str = "checkpoint.safetensors"  # the latest checkpoint
    config: str = "config.json"  # the resolved configuration
    loss_log: str = "loss.jsonl"  # the loss log
    provenance: str = "data.json"  # where the data came from (the Dataset's ``source``)
    step_prefix: str = "checkpoint-step-"  # <step_prefix><step:08d>.safetensors, beside the latest
    tensorboard: str = "tensorboard"  # TensorBoard event directory
    extra: tuple[str, ...] = ("samples",)  # further outputs removed by --overwrite

    def step_file(self, step: int) -> str:
        return f"{self.step_prefix}{step:08d}.safetensors"

    def step_files(self, run_dir: Path) -> list[tuple[int, Path]]:
        """(step, path) of the step-numbered checkpoints present, oldest first."""
        pattern = re.compile(re.escape(self.step_prefix) + r"(\d+)\.safetensors$")
        found = []
        directory = Path(run_dir)
        if directory.is_dir():
            for path in directory.iterdir():
                match = pattern.fullmatch(path.name)
                if match:
                    found.append((int(match.group(1)), path))
        return sorted(found)


DIFFUSION_LAYOUT = RunLayout()

CONFIG_FILE = DIFFUSION_LAYOUT.config
LOSS_FILE = DIFFUSION_LAYOUT.loss_log
CHECKPOINT_FILE = DIFFUSION_LAYOUT.checkpoint


def check_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool,
                  layout: RunLayout = DIFFUSION_LAYOUT) -> Path:
    """Check a run directory without writing anything; returns it as a Path.

    A directory that already holds a run of this layout (a config or checkpoint) is refused unless ``resume``
    (continue it) or ``overwrite`` (its run files will be removed). ``resume`` needs a readable latest
    checkpoint.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory")
    holds_run = any((run_dir / name).exists() for name in (layout.config, layout.checkpoint))
    if resume:
        if overwrite:
            raise RunDirError("--resume and --overwrite contradict each other")
        if not (run_dir / layout.checkpoint).exists():
            raise RunDirError(f"nothing to resume: {run_dir / layout.checkpoint} does not exist")
        read_metadata(run_dir / layout.checkpoint)  # fail early on a foreign or broken file
        return run_dir
    if holds_run and not overwrite:
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
    return run_dir


def make_run_dir(run_dir: str | os.PathLike, *, overwrite: bool, layout: RunLayout = DIFFUSION_LAYOUT) -> Path:
    """Create the directory; with ``overwrite``, first remove this layout's files of an earlier run."""
    run_dir = Path(run_dir)
    if overwrite:
        for name in (layout.config, layout.loss_log, layout.checkpoint, layout.provenance):
            (run_dir / name).unlink(missing_ok=True)
        for _, path in layout.step_files(run_dir):
            path.unlink(missing_ok=True)
        for extra in (layout.tensorboard, *layout.extra):
            shutil.rmtree(run_dir / extra, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def prepare_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool,
                    layout: RunLayout = DIFFUSION_LAYOUT) -> Path:
    """``check_run_dir`` and then, unless resuming, ``make_run_dir``."""
    run_dir = check_run_dir(run_dir, resume=resume, overwrite=overwrite, layout=layout)
    if not resume:
        make_run_dir(run_dir, overwrite=overwrite, layout=layout)
    return run_dir


def read_stored_config(run_dir: str | os.PathLike, layout: RunLayout = DIFFUSION_LAYOUT) -> tuple[dict[str, Any], int]:
    """(the training config as JSON, the step) of the latest checkpoint of a run.

    The config comes from the checkpoint's own metadata (``train_config``), which always matches the state
    it resumes; the config file is the fallback for checkpoints that lack it.
    """
    run_dir = Path(run_dir)
    meta = read_metadata(run_dir / layout.checkpoint)
    config = meta.get("train_config")
    if config is None:
        path = run_dir / layout.config
        if not path.is_file():
            raise CheckpointError(f"{run_dir / layout.checkpoint} records no training config and {path} is missing")
        config = json.loads(path.read_text())
    return dict(config), int(meta.get("step", 0))


def write_checkpoint(run_dir: Path, layout: RunLayout, step: int, data: bytes, *, keep: int) -> Path:
    """Write checkpoint bytes as the run's latest (and step file, keeping the last ``keep``); kill-safe."""
    latest = run_dir / layout.checkpoint
    if keep == 0:
        atomic_write_bytes(latest, data, pause="save")
        return latest
    step_path = run_dir / layout.step_file(step)
    atomic_write_bytes(step_path, data, pause="save")
    pause_point("save-latest")
    _replace_with_link(step_path, latest)
    pause_point("save-prune")
    for _, path in layout.step_files(run_dir)[:-keep]:
        path.unlink(missing_ok=True)
    fsync_directory(step_path.parent)
    return step_path


def _replace_with_link(source: Path, target: Path) -> None:
    """Make ``target`` name the same file as ``source`` atomically (hard link + rename; copy as a fallback)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network or FAT file systems): copy
        atomic_write_bytes(tmp, source.read_bytes())
    os.replace(tmp, target)
    fsync_directory(target.parent)


def drop_future(run_dir: Path, layout: RunLayout, step: int) -> None:
    """On resume from ``step``: remove what an interrupted run left past it (log lines, newer step files,
    temporary files of an interrupted write)."""
    for _, path in [(s, p) for s, p in layout.step_files(run_dir) if s > step]:
        path.unlink(missing_ok=True)
    for path in run_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    truncate_log(run_dir / layout.loss_log, step)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the last checkpoint of an interrupted run); atomic."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        # (event lines such as {"event": "resume", ...} carry a step too and are kept or dropped the same way)
        if isinstance(entry, dict) and entry.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# -- the lock of a run directory while a process trains it -------------------------------------------------------

LOCK_FILE = ".cfgdiff-train.lock"  # in the run directory; holds the trainer's PID while it is locked


class RunDirLocked(RunDirError):
    """Another process is training in this run directory (it holds the directory's lock)."""


_HELD: dict[str, tuple[int, int]] = {}  # resolved run dir -> (fd, depth): the locks this process holds


def lock_holder(run_dir: str | os.PathLike) -> int | None:
    """The PID of the process training in ``run_dir`` now, or None (no trainer, or the lock is this process's).

    The lock is an ``fcntl.flock`` on ``RUN_DIR/.cfgdiff-train.lock``: the OS drops it when its process dies, by
    any means (SIGKILL included), so a lock file left behind locks nothing. Probing takes a shared lock for an
    instant and never waits.
    """
    path = Path(run_dir) / LOCK_FILE
    if str(Path(run_dir).resolve()) in _HELD or not path.is_file():
        return None
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(fd) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_not_locked(run_dir: str | os.PathLike) -> None:
    """Raise ``RunDirLocked`` naming the PID when another process trains in ``run_dir`` (writes nothing)."""
    pid = lock_holder(run_dir)
    if pid:
        raise RunDirLocked(_locked_message(Path(run_dir), pid if pid > 0 else None))


def _locked_message(run_dir: Path, pid: int | None) -> str:
    who = f"process {pid}" if pid else "another process"
    return (f"{run_dir} is being trained by {who} (it holds {run_dir / LOCK_FILE}); wait for it to finish or "
            "stop it, or train in another --run-dir")


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


class RunLock:
    """``with RunLock(run_dir):`` holds the run directory's lock (creating the directory's lock file), or raises
    ``RunDirLocked`` naming the PID that holds it. Re-entrant within a process; released on exit (and by the OS
    when the process dies)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.key = ""

    def __enter__(self) -> RunLock:
        import fcntl

        self.key = str(self.run_dir.resolve())
        if self.key in _HELD:
            fd, depth = _HELD[self.key]
            _HELD[self.key] = (fd, depth + 1)
            return self
        path = self.run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(5):  # a reader's probe (lock_holder) holds a shared lock for an instant
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt == 4:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise RunDirLocked(_locked_message(self.run_dir, pid)) from None
                import time

                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[self.key] = (fd, 1)
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        fd, depth = _HELD[self.key]
        if depth > 1:
            _HELD[self.key] = (fd, depth - 1)
            return
        del _HELD[self.key]
        with contextlib.suppress(OSError):  # the file stays (removing it could let two processes lock two files)
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
