"""``cfgdiff report``: several eval sweeps on one self-contained HTML page (curves on one trade-off plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cfgdiff.cli.arguments import UsageError, output_path

EXIT_OK = 0


def _labels(text: str) -> list[str]:
    labels = [v.strip() for v in text.split(",")]
    if not all(labels):
        raise argparse.ArgumentTypeError(f"--labels takes comma-separated non-empty names, got {text!r}")
    return labels


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="one HTML page comparing eval sweeps: curves on one plot, tables, grids",
                       description="Write one self-contained HTML page (no network needed to open it) from one or "
                                   "more `cfgdiff eval` output directories: their trade-off curves on one plot, "
                                   "where hovering or clicking a point shows that w's samples, then each sweep's "
                                   "run, command, table and grids. `cfgdiff eval` writes DIR/report.html for its "
                                   "own sweep already.")
    p.add_argument("sweeps", type=Path, nargs="+", metavar="DIR",
                   help="eval output directories (each holding results.json and grids/)")
    p.add_argument("--out", type=output_path("--out"), required=True, help="the HTML file to write (e.g. page.html)")
    p.add_argument("--title", default=None, help="page title (default: the sweep's title, or 'Guidance sweeps "
                                                 "compared')")
    p.add_argument("--labels", type=_labels, default=None,
                   help="curve names, comma-separated, one per DIR (default: the settings that differ between "
                        "the sweeps, e.g. 'sampler ddim', else the directory names)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cfgdiff.evaluation.report import load_sweep_dir, write_report

    if args.out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must be an .html path, got {args.out}")
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a directory; give a file name such as {args.out / 'report.html'}")
    if args.labels is not None and len(args.labels) != len(args.sweeps):
        raise UsageError(f"--labels has {len(args.labels)} names for {len(args.sweeps)} directories")
    for d in args.sweeps:  # every directory checked before anything is written
        load_sweep_dir(d)
    path = write_report(args.sweeps, args.out, title=args.title, labels=args.labels)
    print(f"wrote {path} ({len(args.sweeps)} sweep{'s' if len(args.sweeps) > 1 else ''}, "
          f"{path.stat().st_size / 1024:.0f} KiB, self-contained)")
    return EXIT_OK
