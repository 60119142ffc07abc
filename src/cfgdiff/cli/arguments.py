"""Argument types and helpers shared by the ``cfgdiff`` commands.

Every type raises ``argparse.ArgumentTypeError`` with one line that names the option and the bound, which the
parser turns into ``cfgdiff: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit status 2."""


# A word that starts with '-' and then a digit (or '.' and a digit) is a value, never an option: negative numbers
# and lists of them (``--w -1,0,1``, ``--guidance-scale -0.5``, ``--w-range -1:4``, ``--compose "3:-1,8:+2"``-like
# words that begin with a minus), which argparse alone takes for an unknown option ("expected one argument").
NEGATIVE_VALUE = re.compile(r"^-\.?\d")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line and exit status 2 (no usage dump), and that reads a word
    starting with '-' and a digit as a value (``NEGATIVE_VALUE``), so negative weights need no ``--w=-1``."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise UsageError(message)

    def _parse_optional(self, arg_string):  # argparse's hook: None means "a value, not an option"
        if NEGATIVE_VALUE.match(arg_string) and arg_string not in self._option_string_actions:
            return None
        return super()._parse_optional(arg_string)


def float_list(text: str) -> list[float]:
    """Comma-separated finite numbers, e.g. ``0,0.5,1``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    for v in values:
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"guidance weights must be finite, got {v}")
    return values


def int_list(text: str) -> list[int]:
    """Comma-separated integers, e.g. ``0,3,7``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def level_list(name: str, *, minimum: int = 0, allow_none: bool = False) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated integers >= ``minimum`` (``none`` for the empty list where allowed)."""

    def parse(text: str) -> list[int]:
        if allow_none and text.strip().lower() == "none":
            return []
        values = int_list(text)
        if min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{name} takes integers >= {minimum}, got {text!r}")
        return values

    return parse


def checked(name: str, kind: type, ok: Callable[[Any], bool], bound: str) -> Callable[[str], Any]:
    """An argparse type: parse the text as ``kind`` and require ``ok(value)``, else one line naming the bound."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {noun}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{name} must {bound}, got {text}")
        return value

    return parse


def unit_float(name: str) -> Callable[[str], float]:
    """A number in [0, 1]."""
    return checked(name, float, lambda v: 0.0 <= v <= 1.0, "lie in [0, 1]")


def positive_int(name: str) -> Callable[[str], int]:
    """An integer >= 1."""
    return checked(name, int, lambda v: v >= 1, "be >= 1")


def nonnegative_int(name: str) -> Callable[[str], int]:
    """An integer >= 0."""
    return checked(name, int, lambda v: v >= 0, "be >= 0")


def positive_float(name: str) -> Callable[[str], float]:
    """A finite number > 0."""
    return checked(name, float, lambda v: v > 0, "be > 0")


def nonnegative_float(name: str) -> Callable[[str], float]:
    """A finite number >= 0."""
    return checked(name, float, lambda v: v >= 0, "be >= 0")


def output_path(flag: str, *, directory: bool = False) -> Callable[[str], Path]:
    """An argparse type: a path a command will write, a file (or a ``directory``), refused at once when something is
    in the way: the path itself is a directory (a file), or one of its parents is a file."""
    want, other = ("a directory", "a file") if directory else ("a file", "a directory")

    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{flag} needs a path, got {text!r}")
        path = Path(text)
        if path.exists() and path.is_dir() != directory:
            raise argparse.ArgumentTypeError(f"{flag} {text} is {other}, not {want}")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise argparse.ArgumentTypeError(f"{flag} {text}: {parent} is a file, not a directory")
                break
        return path

    return parse


_DURATION_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def duration(flag: str) -> Callable[[str], float]:
    """An argparse type: a wall-clock duration in seconds, written ``90s``, ``10m``, ``1.5h``, ``2d`` or a bare
    number of seconds; it must be positive and finite."""

    def parse(text: str) -> float:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _DURATION_UNITS:
            raise argparse.ArgumentTypeError(f"{flag} takes a duration such as 90s, 10m or 1.5h, got {text!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[unit]
        if not (math.isfinite(seconds) and seconds > 0):
            raise argparse.ArgumentTypeError(f"{flag} must be a positive duration, got {text!r}")
        return seconds

    return parse


def format_duration(seconds: float) -> str:
    """``seconds`` as people write it: 45 s, 10.0 min, 1.50 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def nearest_existing_folder(path: Path) -> Path:
    """The folder a new file at ``path`` would land under that exists now: ``path`` itself when it is a folder,
    else its nearest existing parent."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder if folder.is_dir() else folder.parent


def check_writable(flag: str, path: Path) -> None:
    """Refuse (``UsageError``, one line) an output path that cannot be written, before any work: the nearest
    existing folder of ``path`` (itself when it is one) must take a new file. Probed by creating and removing a
    temporary file there, since permission bits do not tell (root, read-only mounts)."""
    import tempfile

    folder = nearest_existing_folder(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".cfgdiff-write-probe-", dir=folder)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def available_memory() -> int | None:
    """Bytes of memory available for new allocations: psutil's ``available`` when installed, else
    ``MemAvailable`` of /proc/meminfo, else free pages (os.sysconf); None when none of these can tell."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - not installed, or not supported here
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def check_fits_in_memory(what: str, needed: float, *, hint: str = "") -> None:
    """Refuse (``UsageError``, one line) a job whose ``needed`` bytes exceed the memory available now."""
    available = available_memory()
    if available is not None and needed > available:
        raise UsageError(f"{what} needs about {format_bytes(needed)} of memory, {format_bytes(available)} is "
                         f"available{'; ' + hint if hint else ''}")


def device(text: str) -> str:
    """A torch device that exists on this machine: ``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...

    The device is probed by allocating one element on it, so any device torch knows but this machine lacks
    (``mps`` off a Mac, ``cuda`` without a GPU, ``cuda:7`` on a one-GPU machine) is refused here, before
    anything is written.
    """
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (e.g. cpu, cuda, cuda:0, mps)") from None
    if dev.type == "cpu":
        return text
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"--device {text} asked for, but CUDA is not available on this machine")
    try:
        torch.zeros(1, device=dev)
    except (RuntimeError, AssertionError, AttributeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise argparse.ArgumentTypeError(f"--device {text} is not available on this machine ({reason})") from None
    return text


def progress(total: int, desc: str, disable: bool):
    """A tqdm bar on stderr (refreshing every 30 s when stderr is not a terminal, e.g. a log file)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.1 if interactive else 30.0)


def resolve_weights(args: argparse.Namespace, default: list[float]) -> list[float]:
    """The paper's w from ``--w`` or from ``--guidance-scale`` s (w = s - 1), else ``default``."""
    if getattr(args, "guidance_scale", None) is not None:
        return [s - 1.0 for s in args.guidance_scale]
    return list(args.w) if getattr(args, "w", None) is not None else list(default)
