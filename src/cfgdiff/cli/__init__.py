"""The ``cfgdiff`` command line: one module per command, named as the command.

The only package that parses arguments, prints for people and decides exit codes: 0 success, 2 bad input
(one line on stderr, no traceback, nothing written), 1 a run that failed (e.g. a diverged loss), 130 interrupted.
Guidance weights are the paper's w (ε̃ = (1 + w) ε(z, c) - w ε(z)); ``--guidance-scale`` takes s = w + 1.

Each command module has ``add_parser(subparsers)``, which registers the command with ``func=run``, and
``run(args) -> int``. Adding a command means adding a module and naming it in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Sequence

from cfgdiff.cli.arguments import Parser, UsageError
from cfgdiff.cli.config_file import add_config_option, apply_config_file
from cfgdiff.runtime.checkpoint import CheckpointError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# command name -> module under cfgdiff.cli, in the order `cfgdiff --help` lists them
COMMAND_MODULES = {
    "train": "train",
    "sample": "sample",
    "eval": "eval",
    "tune": "tune",
    "toy": "toy",
    "train-classifier": "train_classifier",
    "train-features": "train_features",
    "distill": "distill",
    "report": "report",
    "serve": "serve",
    "info": "info",
}

__all__ = ["COMMAND_MODULES", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(prog="cfgdiff", description="Classifier-free diffusion guidance (Ho & Salimans 2022): train, "
                                                "sample and evaluate class-conditional diffusion models.")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    for module in COMMAND_MODULES.values():
        importlib.import_module(f"cfgdiff.cli.{module}").add_parser(sub)
    add_config_option(sub)  # --config FILE.toml on every command (cfgdiff.cli.config_file)
    return parser


def process_started() -> float:
    """The time.monotonic() at which this process started (Linux: from /proc; elsewhere: now), so that a
    ``--time-budget`` counts the interpreter's start-up and imports too."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5): starttime, in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        if 0 <= age < 3600:
            return time.monotonic() - age
    except (OSError, ValueError, IndexError):
        pass
    return time.monotonic()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cfgdiff`` console script and ``python -m cfgdiff``."""
    from cfgdiff.training import RunDirError, TrainingDiverged

    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        if not argv:  # bare `cfgdiff`: the usage and the commands, exit 2 as for any missing argument
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        args = parser.parse_args(apply_config_file(parser, argv))  # --config: the file's options, flags override
        if getattr(args, "func", None) is None:
            raise UsageError("a command is required; see cfgdiff --help")
        args.argv = argv  # the command line as given, for the records a command writes
        args.started = process_started() if as_program else time.monotonic()  # (--time-budget counts from it)
        return args.func(args)
    except (UsageError, RunDirError, CheckpointError) as err:
        print(f"cfgdiff: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:  # invalid values caught by the library's own checks
        if os.environ.get("CFGDIFF_DEBUG"):
            raise
        print(f"cfgdiff: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the file system refused a read or write the checks before could not foresee
        if os.environ.get("CFGDIFF_DEBUG"):
            raise
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"cfgdiff: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_FAILED
    except TrainingDiverged as err:
        print(f"cfgdiff: training stopped: {err}; the last good checkpoint is kept", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("cfgdiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
