"""The documentation site's sources, checked without building it (fast: no MkDocs build, no bad-input run).

The CLI reference generator (``scripts/docs_hooks.py``) covers every subcommand and option of the parser; every
page under docs/ is in mkdocs.yml's nav; the README stays short and starts with its two commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
pytestmark = pytest.mark.skipif(not (ROOT / "mkdocs.yml").exists(), reason="no mkdocs.yml in this checkout")

MAIN_JOB = ("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e . && .venv/bin/cfgdiff train --data digits"
            " && .venv/bin/cfgdiff sample runs/digits --w 0,1,3 --out runs/digits/grid.png")
TESTS = 'python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ".[dev]" && .venv/bin/python -m pytest'


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_covers_every_command_and_option():
    from cfgdiff.cli import build_parser

    hooks = _hooks()
    parser = build_parser()
    text = hooks.cli_reference(parser)
    commands = hooks.subcommands(parser)
    assert len(commands) >= 10
    sections = re.split(r"^## cfgdiff ", text, flags=re.M)[1:]
    by_name = {section.split("\n", 1)[0].strip(): section for section in sections}
    assert list(by_name) == list(commands)
    for name, sub in commands.items():
        section = by_name[name]
        for action in sub._actions:
            if action.help is argparse.SUPPRESS:
                continue
            for flag in action.option_strings:
                row = rf"^\| `[^`]*(?<![\w-]){re.escape(flag)}(?![\w-])[^`]*` \|"
                assert re.search(row, section, flags=re.M), f"cfgdiff {name}: {flag} missing"
            if not action.option_strings:
                assert f"`{action.metavar or action.dest.upper()}`" in section, f"cfgdiff {name}: {action.dest}"


def test_generated_pages_hold_their_markers():
    hooks = _hooks()
    assert hooks.CLI_MARKER in (DOCS / "cli.md").read_text(encoding="utf-8")
    assert hooks.BAD_INPUTS_MARKER in (DOCS / "bad-inputs.md").read_text(encoding="utf-8")
    assert "hooks.py" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:"):]
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, flags=re.M))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - listed == set(), "pages missing from mkdocs.yml nav"
    assert listed - pages == set(), "nav entries without a page"


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 260
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    assert blocks[:2] == [MAIN_JOB, TESTS]
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).exists(), link
