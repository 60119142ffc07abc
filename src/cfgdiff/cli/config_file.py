"""``--config FILE.toml``: a command's options from a TOML file, flags on the command line overriding it; and the
resolved configuration (file + flags + defaults) written beside a command's outputs.

The file's keys are the long option names, with dashes or underscores (``batch-size = 64``, ``batch_size = 64``);
a positional argument by its name (``run_dir = "runs/digits"``). Values are TOML's own types:

* a number or a string for an option that takes one value (``steps = 4000``, ``sampler = "ddim"``);
* an array (or the comma-separated string) for a list option (``w = [0, 0.3, 1]``, ``channel-mults = [1, 2, 2]``;
  an empty array means ``none``);
* ``true``/``false`` for a switch: ``autocast = false`` is ``--no-autocast``; a plain switch such as ``no-clip``
  is set by ``true`` (``false`` leaves it off, and the command line cannot turn off a switch the file set).

One file may serve several commands: a table per command (``[train]``, ``[sample]``, ``[eval]``, ...) holds that
command's options; top-level keys are then shared: each command takes those it has and skips the others (a
top-level key that neither the running command nor any command with a table in the file has is an error). A file
without tables is for whichever command reads it, and every key must be one of its options. A key in the
command's table beats the same key at the top level; a flag on the command line beats both (for the
mutually exclusive ``--w``/``--guidance-scale``, a flag given replaces the file's other one).

Every value is checked exactly as the flag is (it becomes ``--option=VALUE`` and goes through the option's
own type and choices), also where a flag overrides it, so a bad value gets the flag's one-line message, prefixed
by the file and the key;
unknown keys (with the closest option), wrong TOML types and unparseable files (with the line) are one line
too, exit status 2, before anything is read or written.

``write_resolved_config`` writes every option's final value as a TOML file that ``--config`` reads back
(``cfgdiff train --config RUN_DIR/resolved_config.toml`` trains the same configuration again), without the
one-off actions ``--resume``, ``--overwrite`` and ``--config`` itself, and without options whose value is unset
(None); those are listed in a comment.
"""

from __future__ import annotations

import argparse
import difflib
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cfgdiff.cli.arguments import UsageError

RESOLVED_CONFIG_FILE = "resolved_config.toml"  # what train writes into the run directory, eval into --out
NOT_WRITTEN = frozenset({"config", "resume", "overwrite", "help"})  # one-off actions, not configuration

_UNSET = object()  # "not given on the command line" while the command line is read on its own


def add_config_option(sub: argparse._SubParsersAction) -> None:
    """Add ``--config FILE.toml`` to every command of ``sub`` (the ``cfgdiff`` subparsers)."""
    for parser in sub.choices.values():
        parser.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                            help="read options from a TOML file (keys: the long option names, e.g. steps = 4000, "
                                 "w = [0, 1]; optional per-command tables such as [train]); flags given here "
                                 "override the file")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("parser has no commands")


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one ``cfgdiff`` command."""
    from cfgdiff.cli import build_parser

    return _subparsers(build_parser()).choices[command]


# -- reading --------------------------------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file; ``UsageError`` (one line, with the file and the line) when it cannot be read."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--config: no file at {path}") from None
    except IsADirectoryError:
        raise UsageError(f"--config: {path} is a directory, not a TOML file") from None
    except OSError as err:
        raise UsageError(f"--config: cannot read {path} ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UsageError(f"{path}: not UTF-8 text (line {line}); a config file is TOML") from None
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # Python 3.10: the same parser as a package
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UsageError("--config needs Python >= 3.11 (tomllib) or the tomli package") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: not valid TOML: {err}") from None


def _key_name(text: str) -> str:
    return text.replace("_", "-")


def option_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """{file key (dashes): action} of every option and positional argument of a command's parser."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help") or isinstance(action, argparse._SubParsersAction):
            continue
        names = [_key_name(action.dest)]
        if isinstance(action, argparse.BooleanOptionalAction):
            names.append(action.option_strings[0][2:])  # --autocast / --no-autocast: the key is "autocast"
        else:
            names += [s[2:] for s in action.option_strings if s.startswith("--")]
        for name in names:
            keys.setdefault(name, action)
    return keys


def _key_of(action: argparse.Action) -> str:
    """The name a resolved config writes for an action: its long option, or its dest for a positional."""
    longs = [s[2:] for s in action.option_strings if s.startswith("--")]
    return longs[0] if longs else _key_name(action.dest)


def _unknown(path: Path, what: str, key: str, known: Sequence[str]) -> UsageError:
    close = difflib.get_close_matches(_key_name(key), list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"{path}: {what}{hint}")


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


# argparse types (by qualified name) that read a comma-separated list, e.g. --w 0,1,3: a TOML array goes to them
# joined by commas; any other option takes one value
LIST_TYPES = frozenset({"float_list", "int_list", "level_list.<locals>.parse", "class_list", "_labels", "_w_range",
                        "_int_pair", "_layer_list.<locals>.parse"})


def _is_list_type(action: argparse.Action) -> bool:
    return getattr(action.type, "__qualname__", None) in LIST_TYPES


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # nan, inf and -inf read back through float(); every other float exactly
    return str(value)


def value_tokens(action: argparse.Action, value: Any, label: str) -> list[str]:
    """The command-line tokens that give ``action`` the TOML ``value`` (``UsageError`` for a wrong TOML type)."""
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise UsageError(f"{label}: takes true or false, got {_toml_type(value)}")
        if isinstance(action, argparse.BooleanOptionalAction):
            positive = action.option_strings[0]
            return [positive if value else "--no-" + positive[2:]]
        if action.const is True or action.const is False:  # store_true / store_false
            return [action.option_strings[0]] if value is bool(action.const) else []
        raise UsageError(f"{label}: this option cannot be set from a config file")
    if isinstance(value, dict | bool) or not isinstance(value, str | int | float | list):
        raise UsageError(f"{label}: takes a value, not {_toml_type(value)}")
    many = action.nargs in ("+", "*")
    if isinstance(value, list):
        bad = [v for v in value if isinstance(v, dict | list | bool) or not isinstance(v, str | int | float)]
        if bad:
            raise UsageError(f"{label}: array items must be numbers or strings, got {_toml_type(bad[0])}")
        if many:
            texts = [_text(v) for v in value]
        elif not _is_list_type(action):
            raise UsageError(f"{label}: takes one value, not an array")
        else:  # a list option: the comma-separated form of the flag; [] is "none"
            texts = [",".join(_text(v) for v in value) if value else "none"]
    else:
        if action.type in (None, str, Path) and not isinstance(value, str):
            raise UsageError(f"{label}: takes a string (in quotes), got {_toml_type(value)}")
        texts = [_text(value)]
    if not action.option_strings:  # positional
        return texts
    if many:
        return [action.option_strings[0], *texts]
    return [f"{action.option_strings[0]}={texts[0]}"]  # --opt=VALUE: a value that starts with '-' stays a value


class _Relaxed:
    """The parser with no argument required and every dest preset to ``_UNSET``, to read a part of a command line:
    ``parse(tokens)`` returns {dest: value} of the arguments those tokens give."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def parse(self, tokens: Sequence[str]) -> dict[str, Any]:
        actions = [a for a in self.parser._actions if a.dest is not argparse.SUPPRESS]
        required = [(a, a.required) for a in self.parser._actions]
        namespace = argparse.Namespace(**{a.dest: _UNSET for a in actions})
        try:
            for action, _ in required:
                action.required = False
            self.parser.parse_args(list(tokens), namespace=namespace)
        finally:
            for action, was in required:
                action.required = was
        given = {}
        for action in actions:
            value = getattr(namespace, action.dest, _UNSET)
            if value is _UNSET or (not action.option_strings and value is action.default):
                continue  # not given (an absent optional positional is set to its default)
            given[action.dest] = value
        return given


def _file_values(data: dict[str, Any], command: str, commands: Mapping[str, argparse.ArgumentParser],
                 path: Path) -> dict[str, tuple[str, Any]]:
    """{dest: (label, value)} the file gives the running command, after checking every key of the file."""
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    keys_of = {command: option_keys(commands[command])}
    own = keys_of[command]
    for name in tables:
        if name not in commands:
            raise _unknown(path, f"[{name}] is neither a cfgdiff command nor an option of cfgdiff {command}", name,
                           [*commands, *own])
        keys_of.setdefault(name, option_keys(commands[name]))
    for name, table in tables.items():
        for key, value in table.items():
            if _key_name(key) not in keys_of[name]:
                raise _unknown(path, f"unknown key {key!r} in [{name}]: not an option of cfgdiff {name}", key,
                               list(keys_of[name]))
            if isinstance(value, dict):
                raise UsageError(f"{path}: {name}.{key}: takes a value, not a table")
    for key in top:
        name = _key_name(key)
        if name in own or any(name in keys_of[t] for t in tables):
            continue
        others = "".join(f" or cfgdiff {t}" for t in sorted(tables) if t != command)
        raise _unknown(path, f"unknown key {key!r}: not an option of cfgdiff {command}{others}", key, list(own))
    if tables and command not in tables and not any(_key_name(k) in own for k in top):
        raise UsageError(f"{path} has no [{command}] table and no top-level option of cfgdiff {command} "
                         f"(it has [{'], ['.join(sorted(tables))}])")
    values: dict[str, tuple[str, Any]] = {}
    for prefix, table in (("", top), (f"{command}.", tables.get(command, {}))):
        labels: dict[str, str] = {}
        for key, value in table.items():
            name = _key_name(key)
            if name not in own:
                continue  # a shared top-level key of another command
            label = f"{prefix}{key}"
            if name == "config":
                raise UsageError(f"{path}: {label}: a config file cannot name another config file")
            action = own[name]
            if action.dest in labels:
                raise UsageError(f"{path}: {labels[action.dest]} and {label} both set {_key_of(action)}")
            labels[action.dest] = label
            values[action.dest] = (f"{path}: {label}", value)  # the command's table beats the top level
    return values


def apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with the options of its ``--config`` file put before the command line's own, so that flags given
    override the file; ``argv`` unchanged without ``--config``. Raises ``UsageError`` (one line) for a bad file."""
    argv = list(argv)
    sub = _subparsers(parser)
    if not argv or argv[0] not in sub.choices:
        return argv
    command, tokens = argv[0], argv[1:]
    cp = sub.choices[command]
    relaxed = _Relaxed(cp)
    given = relaxed.parse(tokens)  # the command line's own errors come first, as without a file
    path = given.get("config")
    if path is None:
        return argv
    values = _file_values(read_config_file(path), command, sub.choices, Path(path))
    actions = {a.dest: a for a in cp._actions}
    for group in cp._mutually_exclusive_groups:
        members = [a.dest for a in group._group_actions]
        from_file = [d for d in members if d in values]
        if any(d in given for d in members):
            given.update({d: True for d in from_file})  # a flag given replaces the file's alternative too
        elif len(from_file) > 1:
            raise UsageError(f"{path}: {' and '.join(_key_of(actions[d]) for d in from_file)} exclude each other: "
                             "give one")
    positionals: list[str] = []
    options: list[str] = []
    for action in cp._actions:  # in the parser's order, so positionals keep theirs
        if action.dest not in values:
            continue
        label, value = values[action.dest]
        tokens_of_key = value_tokens(action, value, label)
        try:
            relaxed.parse(tokens_of_key)  # the flag's own type and choices, also for a value a flag overrides
        except UsageError as err:
            raise UsageError(f"{label}: {err}") from None
        if action.dest not in given:
            (options if action.option_strings else positionals).extend(tokens_of_key)
    return [command, *positionals, *options, *tokens]


# -- writing --------------------------------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """One TOML value: a string, bool, int, float (nan and inf included) or a list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        return _toml_string(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def to_toml(tables: Mapping[str, Mapping[str, Any]], *, header: Sequence[str] = ()) -> str:
    """A TOML document of ``{table: {key: value}}`` (None values omitted), with comment lines first."""
    lines = [f"# {line}" if line else "#" for line in header]
    for name, table in tables.items():
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items() if value is not None]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def resolved_options(args: argparse.Namespace, parser: argparse.ArgumentParser,
                     fill: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """({key: value} of every option's final value, [keys left unset]) of a parsed command line.

    ``fill`` gives values for options left unset (None) on the command line, e.g. the data set's defaults a run
    resolved: a fill value is taken only where it reads back as itself through the option's type.
    """
    relaxed = _Relaxed(parser)
    values: dict[str, Any] = {}
    unset: list[str] = []
    for action in parser._actions:
        if action.dest in NOT_WRITTEN or action.dest is argparse.SUPPRESS or action.nargs == argparse.PARSER:
            continue
        key = _key_of(action)
        value = getattr(args, action.dest, None)
        if value is None and fill is not None and fill.get(action.dest) is not None:
            candidate = _plain(fill[action.dest])
            try:
                back = relaxed.parse(value_tokens(action, candidate, key)).get(action.dest)
            except (UsageError, TypeError):
                back = None
            if back is not None and _plain(back) == candidate:
                value = back
        if value is None:
            unset.append(key)
        else:
            values[key] = _plain(value)
    return values, unset


def write_resolved_config(args: argparse.Namespace, path: str | Path, *,
                          fill: Mapping[str, Any] | None = None) -> Path:
    """Write the command's resolved configuration (``resolved_options``) to ``path`` as TOML, atomically, under a
    ``[COMMAND]`` table, so that ``cfgdiff COMMAND --config PATH`` runs the same configuration."""
    from cfgdiff import __version__
    from cfgdiff.runtime.checkpoint import atomic_write_text

    command = args.command
    values, unset = resolved_options(args, command_parser(command), fill)
    header = [f"cfgdiff {command}: the resolved configuration (config file, flags and defaults), written by "
              f"cfgdiff {__version__}.",
              f"Run it again with: cfgdiff {command} --config {path}  (flags given then override it)."]
    if unset:
        header += textwrap.wrap("Unset (the command decides, e.g. from the data set's preset): " + ", ".join(unset),
                                width=110, break_on_hyphens=False)
    path = Path(path)
    atomic_write_text(path, to_toml({command: values}, header=header))
    return path
