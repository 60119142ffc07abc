"""How the network runs, for every command that runs one: ``--precision fp32|bf16|auto``,
``--memory-format auto|contiguous|channels-last`` and ``--compile``.

``auto`` picks the fastest form on this machine for this network by a short measurement (a few calls at the
actual batch shape in each candidate form), cached per machine and network under the cache directory
(``cfgdiff.runtime.precision``); it never picks bf16 where the hardware has no fast bf16. An explicit
``--precision bf16`` there is one line and exit 2. The old switches stay as aliases: ``--autocast`` is
``--precision bf16`` (``--no-autocast``: fp32), ``--channels-last`` is ``--memory-format channels-last``.

``add_form_options(group, ...)`` adds the two choices (and the old switches), ``form_names(args)`` reads them
back with the aliases folded in, ``check_form(args, device)`` refuses an unavailable bf16;
``add_network_options(p)`` adds them with ``--compile`` for the sampling commands and ``network_options(args)``
returns the ``GuidedRun`` keyword arguments. The training commands add them through
``cli.training_options.add_loop_options`` (default fp32 there as here).
"""

from __future__ import annotations

import argparse
from typing import Any

from cfgdiff.cli.arguments import UsageError
from cfgdiff.runtime.precision import MEMORY_FORMATS, PRECISIONS, PrecisionUnavailable, check_precision

DEFAULT_PRECISION = "fp32"  # see docs/precision.md: auto is not the default (outputs would depend on a timing)
DEFAULT_MEMORY_FORMAT = "contiguous"


def add_form_options(g: Any, *, legacy: str | None = None, what: str = "the network") -> None:
    """``--precision`` and ``--memory-format`` (default None: not given, read as fp32 / contiguous).

    ``legacy``: "switch" adds the old ``--autocast`` / ``--channels-last`` as plain switches (``sample``),
    "boolean" as ``--autocast/--no-autocast`` pairs (the training commands), None adds neither."""
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help=f"precision of {what}: fp32, bf16 (autocast; the solver and the update stay fp32) or auto "
                        "(the faster of the two measured here, cached per machine and network; fp32 where the "
                        "hardware has no fast bf16) (default fp32)")
    g.add_argument("--memory-format", choices=MEMORY_FORMATS, default=None,
                   help="memory layout of image networks: contiguous, channels-last, or auto (measured, cached) "
                        "(default contiguous)")
    if legacy == "switch":
        g.add_argument("--autocast", action="store_true", default=None,
                       help="the same as --precision bf16 (deprecated)")
        g.add_argument("--channels-last", action="store_true", default=None,
                       help="the same as --memory-format channels-last (deprecated)")
    elif legacy == "boolean":
        g.add_argument("--autocast", action=argparse.BooleanOptionalAction, default=None,
                       help="the same as --precision bf16 (--no-autocast: fp32) (deprecated)")
        g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="the same as --memory-format channels-last (--no-channels-last: contiguous) "
                            "(deprecated)")


def _fold(new: str | None, old: bool | None, on: str, off: str, flags: tuple[str, str]) -> str | None:
    """``new`` (the new option's value) with the old switch ``old`` (None: not given) folded in."""
    if old is None:
        return new
    implied = on if old else off
    if new is not None and new != implied:
        raise UsageError(f"{flags[1]} {new} contradicts {flags[0] if old else '--no-' + flags[0][2:]}; "
                         f"give {flags[1]} alone")
    return implied


def form_names(args: argparse.Namespace, *, default: bool = True) -> dict[str, str | None]:
    """{"precision", "memory_format"} from the options, the old switches folded in (a contradiction is a
    ``UsageError``). ``default``: None where nothing was given is read as fp32 / contiguous; else stays None."""
    autocast, channels_last = getattr(args, "autocast", None), getattr(args, "channels_last", None)
    precision = _fold(getattr(args, "precision", None), autocast, "bf16", "fp32", ("--autocast", "--precision"))
    memory_format = _fold(getattr(args, "memory_format", None), channels_last, "channels-last", "contiguous",
                          ("--channels-last", "--memory-format"))
    if default:
        precision = precision or DEFAULT_PRECISION
        memory_format = memory_format or DEFAULT_MEMORY_FORMAT
    return {"precision": precision, "memory_format": memory_format}


def check_form(args: argparse.Namespace, device: Any) -> None:
    """One line, exit 2, for ``--precision bf16`` (or ``--autocast``) where the hardware has no fast bf16."""
    if form_names(args)["precision"] != "bf16":
        return
    try:
        check_precision("bf16", device or "cpu")
    except PrecisionUnavailable as err:
        raise UsageError(str(err)) from None


def add_network_options(p: argparse.ArgumentParser, *, legacy: bool = False) -> None:
    """``--precision``, ``--memory-format`` and ``--compile`` of a sampling command (``legacy``: also the old
    ``--autocast`` / ``--channels-last`` switches of ``cfgdiff sample``)."""
    g = p.add_argument_group("network (precision, layout, compilation)")
    add_form_options(g, legacy="switch" if legacy else None)
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network (inductor; its cache lives under the cfgdiff cache directory, "
                        "so a second run compiles faster)")


def network_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``GuidedRun`` keyword arguments of the options: precision, memory_format, compile_network (checked:
    an unavailable bf16 is a ``UsageError``)."""
    check_form(args, getattr(args, "device", "cpu"))
    return {**form_names(args), "compile_network": bool(getattr(args, "compile", False))}
