"""MkDocs hooks of the cfgdiff site (``hooks:`` in mkdocs.yml): the pages that are generated at build time.

- ``docs/cli.md``: the CLI reference, one section per subcommand of ``cfgdiff.cli.build_parser()`` with its usage
  and every option, written from the argparse parsers themselves, so it cannot drift from ``cfgdiff --help``.
- ``docs/bad-inputs.md``: the bad-input catalogue, the Markdown tables that ``scripts/bad_inputs_table.py`` prints
  after running every case for real (about 15 s on one CPU thread).
- ``reports/**.png``: the report figures the pages show. Pages refer to them as ``../reports/...`` (so the links
  work on GitHub, where docs/ sits beside reports/); the hook adds those files to the site under ``reports/`` and
  rewrites the links, so the strict build checks them like any other link.

The committed pages hold a marker line (``CLI_MARKER``, ``BAD_INPUTS_MARKER``) where the generated text goes.
``cli_reference()`` needs no MkDocs (``tests/test_docs.py`` calls it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI_MARKER = "<!-- generated: cli-reference -->"
BAD_INPUTS_MARKER = "<!-- generated: bad-inputs-table -->"
REPORT_LINK = re.compile(r"\]\(\.\./reports/([^)\s]+)\)")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser``, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_name(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar or action.dest.upper()
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    return ", ".join(f"{flag} {metavar}" for flag in action.option_strings)


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or not action.option_strings:
        return ""
    if action.default is None or action.default is argparse.SUPPRESS:
        return ""
    value = action.default
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"`{value}`"


def command_section(name: str, parser: argparse.ArgumentParser) -> str:
    """One subcommand: its description, usage and one table per argument group."""
    formatter = parser.formatter_class(prog=parser.prog, width=100)  # fixed width: the page is the same anywhere
    lines = [f"## cfgdiff {name}", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    usage_formatter = parser.formatter_class(prog=parser.prog, width=100)
    usage_formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    usage = usage_formatter.format_help().strip()
    lines += ["```text", usage, "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS]
        if not actions:
            continue
        title = group.title or "options"
        lines += [f"**{title[0].upper() + title[1:]}**", "", "| option | default | meaning |", "|---|---|---|"]
        for action in actions:
            help_text = formatter._expand_help(action) if action.help else ""
            if action.choices and action.option_strings and not isinstance(action.choices, dict):
                choices = ", ".join(str(c) for c in action.choices)
                if choices not in help_text:
                    help_text = f"{help_text} (one of {choices})".strip()
            lines.append(f"| `{_cell(_option_name(action))}` | {_default(action)} | {_cell(help_text)} |")
        lines.append("")
    return "\n".join(lines)


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole CLI reference in Markdown, from ``cfgdiff.cli.build_parser()`` unless a parser is given."""
    if parser is None:
        from cfgdiff.cli import build_parser

        parser = build_parser()
    commands = subcommands(parser)
    lines = ["| command | what it does |", "|---|---|"]
    for name, sub in commands.items():
        first = _cell(re.split(r"\.\s+(?=[A-Z])", sub.description or "")[0].rstrip("."))
        anchor = f"cfgdiff-{name}"
        lines.append(f"| [`{name}`](#{anchor}) | {first} |")
    body = "\n".join(lines) + "\n\n" + "\n".join(command_section(name, sub) for name, sub in commands.items())
    return body


def bad_inputs_tables() -> tuple[str, str]:
    """Run ``scripts/bad_inputs_table.py`` (every case, for real): the tables it prints, and its problem report."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bad_inputs_table.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/bad_inputs_table.py failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    problems = done.stderr[done.stderr.find("PROBLEMS"):] if "PROBLEMS" in done.stderr else ""
    tables = re.sub(r"^#### ", "## ", done.stdout, flags=re.M)  # the page's sections
    return tables, problems


# ---- MkDocs hooks -------------------------------------------------------------------------------------------

_CACHE: dict[str, str] = {}


def on_pre_build(config, **kwargs):
    import logging

    log = logging.getLogger("mkdocs.hooks.cfgdiff")
    _CACHE["cli"] = cli_reference()
    tables, problems = bad_inputs_tables()
    if problems:  # a case that is no longer one line / exit 2: a warning, so --strict fails the build
        log.warning("scripts/bad_inputs_table.py: %s", problems.strip())
    _CACHE["bad-inputs"] = tables


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    for path in sorted((ROOT / "reports").rglob("*.png")):
        rel = path.relative_to(ROOT).as_posix()
        if files.get_file_from_path(rel) is None:
            files.append(File(rel, src_dir=str(ROOT), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, _CACHE.get("cli") or cli_reference())
    if BAD_INPUTS_MARKER in markdown:
        tables = _CACHE.get("bad-inputs")
        if tables is None:
            tables, _ = bad_inputs_tables()
        markdown = markdown.replace(BAD_INPUTS_MARKER, tables)
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth
    return REPORT_LINK.sub(lambda m: f"]({prefix}reports/{m.group(1)})", markdown)
