"""The report page: one self-contained HTML file from one or more ``cfgdiff eval`` output directories.

The page needs nothing but itself: the sample grids are embedded as ``data:`` URIs, the style sheet and the
script are inlined from ``static/`` (package data), the results travel as JSON in a ``<script
type="application/json">`` element, and a Content-Security-Policy forbids every network request. The tables and
grids are plain HTML written here (readable without JavaScript); the script draws the trade-off plot as SVG
from the JSON and links each point to its grid. No charting library: one scatter plot with lines, error bars
and a floor line is about two hundred lines of SVG code, keeps the page small and lets a test address every
point as a DOM element.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cfgdiff.evaluation.report.columns import (
    DEFAULT_X,
    DEFAULT_Y,
    FLOOR_KEYS,
    KNOWN_META,
    PR_AXES,
    Column,
    axis_columns,
    finite_or_none,
    format_value,
    is_number,
    merge_columns,
    meta_items,
    table_columns,
)

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
GRID_DIR = "grids"
SAMPLES_FILE = "samples.png"  # 2-D data: the exact guided densities above the samples, one column per w
# what tells sweeps apart in a multi-sweep report, in the order labels name them
LABEL_ROW_KEYS = ("guidance", "sampler", "steps", "n", "seed")
LABEL_META_KEYS = ("guidance_params", "data", "run_dir", "p_uncond", "train_step")


class ReportError(ValueError):
    """A directory that is not an eval output, or a bad report argument: one line."""


@dataclass
class Sweep:
    """One eval output directory as the page shows it."""

    path: Path
    title: str
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    grids: list[str | None] = field(default_factory=list)  # per row: the grid PNG as a data: URI, or None
    label: str = ""
    samples: str | None = None  # samples.png (2-D data, all w in one figure) as a data: URI


def _fmt_w(w: Any) -> str:
    return f"{float(w):g}"


def png_data_uri(path: str | os.PathLike) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def grid_path(sweep_dir: str | os.PathLike, w: Any) -> Path:
    """Where ``evaluation.write_sweep`` puts the grid of weight w: ``grids/w_{w:g}.png``."""
    return Path(sweep_dir) / GRID_DIR / f"w_{_fmt_w(w)}.png"


def load_sweep_dir(path: str | os.PathLike) -> Sweep:
    """Read an eval output directory: its ``results.json`` and, per row, ``grids/w_{w}.png`` if present."""
    path = Path(path)
    results = path / RESULTS_FILE if path.is_dir() else path
    if not results.is_file():
        raise ReportError(f"{path}: no {RESULTS_FILE} (is it a cfgdiff eval output directory?)")
    try:
        data = json.loads(results.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{results}: not readable as JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise ReportError(f"{results}: expected an object with a non-empty list of rows")
    rows = data["rows"]
    if not all(isinstance(r, dict) for r in rows):
        raise ReportError(f"{results}: every row must be an object")
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    sweep_dir = results.parent
    grids: list[str | None] = []
    for row in rows:
        png = grid_path(sweep_dir, row["w"]) if is_number(row.get("w")) else None
        grids.append(png_data_uri(png) if png is not None and png.is_file() else None)
    title = str(data.get("title") or sweep_dir.name)
    samples = png_data_uri(sweep_dir / SAMPLES_FILE) if (sweep_dir / SAMPLES_FILE).is_file() else None
    return Sweep(sweep_dir, title, meta, rows, grids, samples=samples)


def _finite(value: Any) -> bool:
    return is_number(value) and value == value and abs(value) != float("inf")


def primary_metric(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The row field the table marks the best of (lowest): FID, else the sliced Wasserstein distance."""
    return next((k for k in DEFAULT_Y if any(_finite(r.get(k)) for r in rows)), None)


def _setting(sweep: Sweep, key: str) -> Any:
    """A setting the sweep holds for all its rows (from the rows, else the meta), or None when it varies."""
    if key in LABEL_META_KEYS and key in sweep.meta:
        return sweep.meta[key]
    values = {json.dumps(r.get(key), sort_keys=True, default=str) for r in sweep.rows}
    return sweep.rows[0].get(key) if len(values) == 1 else None


def sweep_labels(sweeps: Sequence[Sweep]) -> list[str]:
    """Names that tell the sweeps apart: the settings that differ between them (guidance, sampler, steps,
    N, seed, run, p_uncond, ...), e.g. "sampler dpmpp_2m, steps 10"; the title for a single sweep; the
    directory names when no recorded setting differs."""
    if len(sweeps) == 1:
        return [sweeps[0].title]
    differing = []
    for key in (*LABEL_ROW_KEYS, *LABEL_META_KEYS):
        values = [json.dumps(_setting(s, key), sort_keys=True, default=str) for s in sweeps]
        if len(set(values)) > 1:
            differing.append(key)
    labels = [", ".join(f"{k.replace('_', ' ')} {format_value(k, _setting(s, k))}" for k in differing)
              for s in sweeps]
    if differing and len(set(labels)) == len(labels):
        return labels
    names = [s.path.name or str(s.path) for s in sweeps]
    if len(set(names)) == len(names):
        return names
    return [str(s.path) for s in sweeps]


def _static(name: str) -> str:
    return resources.files("cfgdiff.evaluation.report").joinpath("static", name).read_text(encoding="utf-8")


def _json_for_script(obj: Any) -> str:
    """JSON safe inside a <script> element: no "</script>", no "<!--", no HTML entities."""
    text = json.dumps(finite_or_none(obj), allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(column: Column, row: Mapping[str, Any]) -> str:
    value = row.get(column.key)
    raw = json.dumps(finite_or_none(value), default=str) if column.key in row else ""
    attrs = f' data-key="{_e(column.key)}" data-value="{_e(raw)}"'
    std = column.std_text(row)
    if std is not None:
        std_raw = json.dumps(finite_or_none(row[column.std_key]))
        attrs += f' data-std="{_e(std_raw)}"'
        body = f'{_e(column.text(row))} <span class="pm">± {_e(std)}</span>'
    else:
        body = _e(column.text(row)) if column.key in row else ""
    cls = ' class="num"' if column.numeric else ""
    return f"<td{cls}{attrs}>{body}</td>"


def _table(index: int, sweep: Sweep, columns: Sequence[Column]) -> str:
    head = "".join(
        f'<th data-key="{_e(c.key)}" scope="col">{_e(c.header)}'
        + (' <span class="pm">± spread</span>' if c.std_key else "") + "</th>"
        for c in columns
    )
    metric = primary_metric(sweep.rows)
    values = [r[metric] for r in sweep.rows if metric and _finite(r.get(metric))]
    best = min(values) if values else None
    body = []
    for j, row in enumerate(sweep.rows):
        cls = "row best" if best is not None and row.get(metric) == best else "row"
        body.append(f'<tr class="{cls}" id="row-{index}-{j}" data-sweep="{index}" data-row="{j}">'
                    + "".join(_cell(c, row) for c in columns) + "</tr>")
    return (f'<table class="results" id="table-{index}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _grids(index: int, sweep: Sweep) -> str:
    figures = []
    for j, (row, uri) in enumerate(zip(sweep.rows, sweep.grids, strict=True)):
        if uri is None:
            continue
        w = _fmt_w(row["w"])
        figures.append(f'<figure class="grid" id="grid-{index}-{j}" data-sweep="{index}" data-row="{j}" '
                       f'data-w="{_e(w)}"><img src="{uri}" alt="samples at w = {_e(w)}" loading="eager">'
                       f"<figcaption>w = {_e(w)}</figcaption></figure>")
    if not figures:
        if sweep.samples is not None:
            return (f'<figure class="samples"><img src="{sweep.samples}" alt="samples at every w"><figcaption>'
                    "Samples at every w (columns) under the exact guided densities.</figcaption></figure>")
        return '<p class="note">No sample grids in this directory.</p>'
    return ('<p class="note">One grid per w, each class a row; every grid starts from the same noise, so the '
            f'grids differ by guidance alone.</p><div class="grids">{"".join(figures)}</div>')


def _meta(sweep: Sweep) -> str:
    """The run, the command and the references; every other recorded setting folded away below them."""
    main, rest = [], []
    for key, label, text in meta_items(sweep.meta):
        value = f"<code>{_e(text)}</code>" if key == "command" else _e(text)
        (main if key in KNOWN_META else rest).append(f'<dt>{_e(label)}</dt><dd data-key="{_e(key)}">{value}</dd>')
    main.append(f"<dt>directory</dt><dd>{_e(sweep.path)}</dd>")
    more = (f'<details><summary>all recorded settings ({len(rest)} more)</summary><dl class="meta">'
            f'{"".join(rest)}</dl></details>') if rest else ""
    return f'<dl class="meta">{"".join(main)}</dl>{more}'


def render_report(sweeps: Sequence[Sweep], *, title: str | None = None, generated: str | None = None) -> str:
    """The page's HTML for these sweeps (labels as set on them; ``sweep_labels`` makes defaults)."""
    if not sweeps:
        raise ReportError("no sweeps to report")
    per_sweep = [table_columns(s.rows, s.meta) for s in sweeps]
    axes = axis_columns(merge_columns(per_sweep))
    axis_keys = [c.key for c in axes]
    all_rows = [r for s in sweeps for r in s.rows]

    def default_axis(candidates: Sequence[str]) -> str | None:
        return next((k for k in candidates if k in axis_keys and any(_finite(r.get(k)) for r in all_rows)), None)
    title = title or (sweeps[0].title if len(sweeps) == 1 else "Guidance sweeps compared")
    generated = generated or _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    metric_names = {(s.meta.get("fid_name"), s.meta.get("is_name")) for s in sweeps}
    data = {
        "title": title,
        "axes": [{"key": c.key, "label": c.header, "std_key": c.std_key} for c in axes],
        "default_x": default_axis(DEFAULT_X),
        "default_y": default_axis(DEFAULT_Y),
        "pr_axes": list(PR_AXES) if all(default_axis((k,)) == k for k in PR_AXES) else None,
        "sweeps": [{"label": s.label or s.title, "title": s.title, "rows": s.rows,
                    "floors": {k: s.meta[m] for k, m in FLOOR_KEYS.items() if _finite(s.meta.get(m))},
                    "best": primary_metric(s.rows), "has_grid": [u is not None for u in s.grids]}
                   for s in sweeps],
    }
    sections = []
    for i, (sweep, columns) in enumerate(zip(sweeps, per_sweep, strict=True)):
        heading = _e(sweep.label or sweep.title)
        sub = f'<p class="subtitle">{_e(sweep.title)}</p>' if sweep.label and sweep.label != sweep.title else ""
        sections.append(
            f'<section class="sweep" id="sweep-{i}" data-sweep="{i}"><h2><span class="swatch" '
            f'data-sweep="{i}"></span>{heading}</h2>{sub}{_meta(sweep)}{_table(i, sweep, columns)}'
            f"{_grids(i, sweep)}</section>"
        )
    warning = ""
    if len(metric_names) > 1:
        warning = ('<p class="warning">These sweeps were scored with different metrics; their curves are not '
                   "comparable.</p>")
    plot = (
        '<section id="plot-section"><h2>Trade-off</h2>'
        '<p class="note">Hover over a point to see its samples, click to keep them; the axes can show any '
        "numeric column.</p>"
        '<div class="controls"><label>x <select id="x-axis"></select></label> '
        '<label>y <select id="y-axis"></select></label></div>'
        '<div class="plot-row"><div class="plot-box"><svg id="plot" role="img" aria-label="trade-off plot" '
        'viewBox="0 0 640 440" xmlns="http://www.w3.org/2000/svg"></svg><div id="legend"></div></div>'
        '<figure id="preview"><img id="preview-img" alt="" hidden>'
        '<figcaption id="preview-caption">Hover over or click a point.</figcaption></figure></div>'
        f"{warning}</section>"
    )
    if data["pr_axes"]:
        plot += (
            '<section id="pr-section"><h2>Precision against recall</h2>'
            '<p class="note">Fidelity (precision, y) against diversity (recall, x) in the same features, one point '
            "per w (labelled), ± the standard errors; guidance usually trades recall for precision.</p>"
            '<div class="plot-box"><svg id="pr-plot" role="img" aria-label="precision against recall" '
            'viewBox="0 0 640 440" xmlns="http://www.w3.org/2000/svg"></svg></div></section>'
        )
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
           "base-uri 'none'; form-action 'none'")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_static('report.css')}</style></head>"
        f'<body><header><h1>{_e(title)}</h1><p class="generated">cfgdiff report, {_e(generated)}</p></header>'
        f"<main>{plot}{''.join(sections)}</main>"
        f'<script type="application/json" id="cfgdiff-data">{_json_for_script(data)}</script>'
        f"<script>{_static('report.js')}</script></body></html>\n"
    )


def write_report(
    sweep_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    title: str | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Write one self-contained HTML page for these eval output directories and return its path.

    One directory: its run and command, the table, the trade-off plot and the grids. Several: their curves on
    one plot (labelled by ``labels``, else by the settings that differ, see ``sweep_labels``), then each
    sweep's table and grids. Raises ``ReportError`` (one line) for a directory without ``results.json``.
    """
    if not sweep_dirs:
        raise ReportError("give at least one eval output directory")
    sweeps = [load_sweep_dir(d) for d in sweep_dirs]
    if labels is not None:
        if len(labels) != len(sweeps):
            raise ReportError(f"{len(labels)} labels for {len(sweeps)} sweeps")
        names = list(labels)
    else:
        names = sweep_labels(sweeps)
    for sweep, name in zip(sweeps, names, strict=True):
        sweep.label = name
    out = Path(out)
    page = render_report(sweeps, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
