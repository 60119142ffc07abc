"""What a tune writes: the trial table (``trials.csv``, ``trials.md``), the front plot (``front.png``: two objectives
against each other, the front marked; one objective: its value against w), ``summary.json`` and ``report.html``
(one self-contained page: the setting chosen, its re-scored figure with spreads, what pruning saved, the table and
the plot). ``best.toml`` is the command line's (it knows the flags).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from cfgdiff.evaluation.plotting import save_figure
from cfgdiff.runtime.checkpoint import atomic_write_text
from cfgdiff.tuning.study import SCORED_FIELDS, TuneResult, pareto_front

TABLE_METRICS = tuple(m for m in SCORED_FIELDS if not m.endswith("_std"))  # the table's metric columns


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _pm(value: float | None, std: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" + (f" ± {std:.2g}" if std is not None else "")


def _columns(result: TuneResult) -> tuple[list[str], list[str]]:
    params = [r.name for r in result.space]
    metrics = [m for m in TABLE_METRICS if any(m in t.metrics for t in result.trials)]
    return params, metrics


def trial_rows(result: TuneResult) -> list[dict[str, Any]]:
    """One dict per trial: number, state, N, rows, the parameters, the objective values, the metrics."""
    params, metrics = _columns(result)
    out = []
    for t in result.trials:
        row: dict[str, Any] = {"trial": t.number, "state": t.state, "n": t.n, "network_rows": t.rows}
        row.update({p: t.params.get(p) for p in params})
        for i, name in enumerate(result.objective.metrics):
            row[f"objective_{name}"] = t.values[i] if t.values else None
        row["feasible"] = t.feasible
        row.update({m: t.metrics.get(m) for m in metrics})
        out.append(row)
    return out


def _markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _final_lines(result: TuneResult) -> list[str]:
    lines = []
    for score in result.final:
        row, parts = score.row, score.trial.params
        setting = ", ".join(f"{k} = {_fmt(v)}" for k, v in parts.items())
        metrics = [f"FID {_pm(row.fid, row.fid_std)}" if row.fid is not None else None,
                   f"KID {_pm(row.kid, row.kid_std)}" if row.kid is not None else None,
                   f"precision {_fmt(row.precision)}, recall {_fmt(row.recall)}" if row.precision is not None else None,
                   f"SW_2 {_pm(row.sliced_wasserstein, row.sliced_wasserstein_std)}"
                   if row.sliced_wasserstein is not None else None,
                   f"NFE / sample {row.nfe_per_sample:g}"]
        lines.append(f"trial {score.trial.number} ({setting}): " + "; ".join(m for m in metrics if m)
                     + f" (N = {row.n}, fresh seeds {row.seed})")
    return lines


def pruning_line(result: TuneResult) -> str:
    """What the cheap-trials-first schedule saved, in network rows."""
    if result.objective.multi:
        return (f"pruning: none (Optuna prunes one-objective studies only); {result.rows_used:,} network rows "
                f"spent, every trial at N = {result.settings.n_max}")
    return (f"pruning: {result.rows_used:,} network rows spent against {result.rows_without_pruning:,} had every "
            f"trial run to N = {result.settings.n_max}: {100 * result.saved_share:.0f} % saved "
            f"({sum(t.state == 'pruned' for t in result.trials)} of "
            f"{sum(t.state in ('complete', 'pruned') for t in result.trials)} trials stopped early)")


def front_plot(result: TuneResult, path: str | os.PathLike) -> Path:
    """Two objectives: every finished trial in their plane, the front joined, re-scored points with error bars.
    One objective: its value against w, pruned trials hollow, the chosen one marked."""
    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    done = [t for t in result.trials if t.values and t.state in ("complete", "pruned")]
    names = result.objective.metrics
    if result.objective.multi:
        ax.scatter([t.values[0] for t in done], [t.values[1] for t in done], s=18, color="0.6",  # type: ignore[index]
                   label="trials")
        front = pareto_front(result.trials, result.objective)
        ax.plot([t.values[0] for t in front], [t.values[1] for t in front], "o-", color="C0",  # type: ignore[index]
                label="front")
        for i, score in enumerate(result.final):
            x, y = (getattr(score.row, n, None) for n in names)
            if x is not None and y is not None:
                ax.plot([x], [y], "x", color="C3", markersize=9,
                        label=f"re-scored at N = {score.row.n}, fresh seeds" if i == 0 else None)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    else:
        for state in ("complete", "pruned"):
            pts = [t for t in done if t.state == state]
            ax.scatter([t.params.get("w") for t in pts], [t.values[0] for t in pts], s=20,  # type: ignore[index]
                       facecolors="C0" if state == "complete" else "none", edgecolors="C0",
                       label=f"{state} (N = {result.settings.n_max})" if state == "complete" else
                       "pruned (its largest N)")
        for score in result.final:
            value = getattr(score.row, names[0], None)
            if value is not None:
                ax.plot([score.trial.params.get("w")], [value], "x", color="C3", markersize=10,
                        label=f"chosen, re-scored at N = {score.row.n}")
        ax.set_xlabel("w")
        ax.set_ylabel(names[0])
    ax.set_title(f"cfgdiff tune: {result.objective.text}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    return path


def write_tune(result: TuneResult, out_dir: str | os.PathLike, *, command: str, title: str) -> dict[str, Path]:
    """Write trials.csv/.md, front.png, summary.json and report.html into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(result)
    paths: dict[str, Path] = {"csv": out / "trials.csv", "md": out / "trials.md", "plot": out / "front.png",
                              "json": out / "summary.json", "html": out / "report.html"}
    with open(paths["csv"], "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    final = _final_lines(result)
    header = [f"# {title}", "", f"- command: `{command}`", f"- objective: {result.objective.text}",
              f"- searched: {'; '.join(r.describe() for r in result.space)}",
              f"- study {result.study_name!r} in {result.storage}", f"- {pruning_line(result)}", "",
              "## Chosen setting, re-scored on fresh seeds", "", *(f"- {line}" for line in final or ["none feasible"]),
              "", "## Trials", ""]
    atomic_write_text(paths["md"], "\n".join(header) + "\n" + _markdown(rows))
    front_plot(result, paths["plot"])
    summary = {"title": title, "command": command, "objective": result.objective.text,
               "space": [r.describe() for r in result.space], "study": result.study_name,
               "rows_used": result.rows_used, "rows_without_pruning": result.rows_without_pruning,
               "saved_share": result.saved_share,
               "chosen": [{"trial": s.trial.number, "params": s.trial.params,
                           "rescored": {k: v for k, v in vars(s.row).items()
                                        if not (isinstance(v, float) and not math.isfinite(v))}}
                          for s in result.final],
               "trials": rows}
    atomic_write_text(paths["json"], json.dumps(summary, indent=2, default=str) + "\n")
    image = base64.b64encode(paths["plot"].read_bytes()).decode("ascii")
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {}))
    searched = "; ".join(r.describe() for r in result.space)
    chosen = "".join(f"<li>{html.escape(x)}</li>" for x in final) or "<li>none feasible</li>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;font-size:0.85em}}
td,th{{border:1px solid #ccc;padding:0.2em 0.5em;text-align:right}}code{{background:#f4f4f4}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>command: <code>{html.escape(command)}</code></p>
<p>objective: {html.escape(result.objective.text)}; searched: {html.escape(searched)}</p>
<p>{html.escape(pruning_line(result))}</p>
<h2>Chosen setting, re-scored on fresh seeds</h2><ul>{chosen}</ul>
<img alt="front" src="data:image/png;base64,{image}">
<h2>Trials</h2><table><tr>{head}</tr>{table}</table>
</body></html>
"""
    atomic_write_text(paths["html"], page)
    return paths


