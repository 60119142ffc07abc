"""HTML reports of guidance sweeps: ``report.html`` beside every ``cfgdiff eval`` output, and ``cfgdiff report``.

``write_report([DIR], DIR / "report.html")`` turns an eval output directory (``results.json`` and
``grids/w_{w}.png``) into one self-contained page: the run and command, the FID / IS table with N and spread,
the trade-off plot drawn in the page from the results (hover or click a point to see that w's grid), and the
grids side by side. Several directories give one plot with a curve per sweep, then each sweep's table and
grids. Imports nothing heavy (no torch, no matplotlib): the page is written from the files alone.
"""

from cfgdiff.evaluation.report.columns import Column, format_value, table_columns
from cfgdiff.evaluation.report.page import (
    REPORT_FILE,
    ReportError,
    Sweep,
    load_sweep_dir,
    render_report,
    sweep_labels,
    write_report,
)

__all__ = [
    "REPORT_FILE",
    "Column",
    "ReportError",
    "Sweep",
    "format_value",
    "load_sweep_dir",
    "render_report",
    "sweep_labels",
    "table_columns",
    "write_report",
]
