"""The report of a benchmark script: Markdown lines printed as they come and kept in a file, tables also as CSV.

Imported by the scripts beside it (``benchmarks/training.py``, ``benchmarks/sampling.py``), which run as
``python benchmarks/NAME.py`` and so find this module on their own folder's path.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Report:
    """Lines of Markdown, printed and rewritten to ``out`` after every table; the tables' rows (with their
    section) to ``out`` with the suffix .csv. ``cell`` formats a table cell; ``csv_all_keys``: a CSV row holds
    every key of the row, else only the table's columns."""

    def __init__(self, out: Path, *, cell: Callable[[Any], str] = str, csv_all_keys: bool = True) -> None:
        self.out, self.cell, self.csv_all_keys = out, cell, csv_all_keys
        self.lines: list[str] = []
        self.rows: list[dict] = []

    def text(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def table(self, section: str, rows: list[dict], columns: list[str]) -> None:
        self.text("")
        self.text("| " + " | ".join(columns) + " |")
        self.text("|" + "---|" * len(columns))
        for row in rows:
            self.text("| " + " | ".join(self.cell(row.get(c, "")) for c in columns) + " |")
            kept = row if self.csv_all_keys else {c: row.get(c, "") for c in columns}
            self.rows.append({"section": section, **kept})
        self.text("")
        self.write()

    def finish(self, seconds: float) -> None:
        """The benchmark's total time as the last line, the files written, and where they are printed."""
        self.text(f"Total benchmark time: {seconds:.0f} s.")
        self.write()
        print(f"wrote {self.out} and {self.out.with_suffix('.csv')}")

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("\n".join(self.lines) + "\n")
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        with open(self.out.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
