"""The tuned-methods leaderboard: every guidance method tuned by ``cfgdiff tune`` with the same budget, each winner
re-scored on fresh seeds, in one table; and the precision/recall fronts of several methods on one plot.

    python scripts/tune_leaderboard.py --tunes reports/tune_digits/fid --fronts reports/tune_digits/front \\
        --out reports/tune_digits

``--tunes DIR``: one sub-folder per method, each the --out of a one-objective ``cfgdiff tune`` (its summary.json
and final/results.json); ``--fronts DIR``: one sub-folder per method, each a ``pareto:precision,recall`` tune.
Writes OUT/leaderboard.md (and .json) and OUT/fronts.png. Differences are called "inside the spread" when two
FIDs are less than two of their combined bootstrap std apart.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from cfgdiff.evaluation.plotting import save_figure


def _pm(value: Any, std: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _load(folder: Path) -> dict[str, Any]:
    summary = json.loads((folder / "summary.json").read_text())
    final = json.loads((folder / "final" / "results.json").read_text())
    return {"summary": summary, "row": final["rows"][0], "meta": final["meta"]}


def leaderboard(tunes: Path) -> tuple[list[dict[str, Any]], list[str]]:
    entries = []
    for folder in sorted(p for p in tunes.iterdir() if (p / "summary.json").is_file()):
        loaded = _load(folder)
        row, summary = loaded["row"], loaded["summary"]
        finished = [t for t in summary["trials"] if t["state"] in ("complete", "pruned")]
        entries.append({"method": folder.name, "params": summary["chosen"][0]["params"], "row": row,
                        "trials": len(finished), "rows_used": summary["rows_used"],
                        "saved_share": summary["saved_share"], "command": summary["command"]})
    entries.sort(key=lambda e: e["row"]["fid"])
    lines = ["| method | tuned setting | FID ± bootstrap std | KID ± std | precision | recall | density | coverage "
             "| FID per class | NFE / sample | trials | network rows spent (pruning saved) |",
             "|" + "---|" * 12]
    for e in entries:
        r = e["row"]
        setting = ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in e["params"].items())
        lines.append(f"| {e['method']} | {setting} | {_pm(r['fid'], r.get('fid_std'))} | "
                     f"{_pm(r.get('kid'), r.get('kid_std'), 4)} | {_pm(r.get('precision'), None)} | "
                     f"{_pm(r.get('recall'), None)} | {_pm(r.get('density'), None)} | {_pm(r.get('coverage'), None)} | "
                     f"{_pm(r.get('fid_per_class'), None)} | {r['nfe_per_sample']:g} | {e['trials']} | "
                     f"{e['rows_used']:,} ({100 * e['saved_share']:.0f} %) |")
    best = entries[0]["row"] if entries else None
    notes = []
    for e in entries[1:]:
        r = e["row"]
        spread = math.hypot(best.get("fid_std") or 0.0, r.get("fid_std") or 0.0)
        gap = r["fid"] - best["fid"]
        verdict = "inside the spread" if gap < 2 * spread else "beyond the spread"
        notes.append(f"- {e['method']}: FID {gap:+.3f} against {entries[0]['method']} (combined std {spread:.3f}): "
                     f"{verdict}")
    return entries, ["\n".join(lines), "", *notes]


def fronts_plot(fronts: Path, out: Path) -> list[str]:
    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    names = []
    for i, folder in enumerate(sorted(p for p in fronts.iterdir() if (p / "summary.json").is_file())):
        summary = json.loads((folder / "summary.json").read_text())
        points = [(t["objective_precision"], t["objective_recall"]) for t in summary["trials"]
                  if t["state"] == "complete" and t.get("objective_precision") is not None]
        front = []
        for p in sorted(points, key=lambda q: -q[0]):  # the points no other beats in both
            if not front or p[1] > front[-1][1]:
                front.append(p)
        ax.plot([p[1] for p in front], [p[0] for p in front], "o-", color=f"C{i}", label=folder.name)
        names.append(folder.name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision/recall fronts of the tuned methods", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tunes", type=Path, required=True)
    p.add_argument("--fronts", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="Guidance methods tuned with the same budget")
    p.add_argument("--command", action="append", default=[], help="a command that made the runs (repeatable)")
    args = p.parse_args()
    entries, table = leaderboard(args.tunes)
    args.out.mkdir(parents=True, exist_ok=True)
    text = [f"# {args.title}", "", *[f"- run: `{c}`" for c in args.command],
            "- each row's command is in its tune's summary.json; e.g. " + f"`{entries[0]['command']}`"
            if entries else "", "- the figures are the winners re-scored on fresh seeds (the tune's final/ folder)",
            "", *table, ""]
    if args.fronts is not None:
        names = fronts_plot(args.fronts, args.out / "fronts.png")
        text += [f"![precision/recall fronts](fronts.png) (methods: {', '.join(names)}; each a "
                 "pareto:precision,recall tune, complete trials at its N)", ""]
    (args.out / "leaderboard.md").write_text("\n".join(text))
    (args.out / "leaderboard.json").write_text(json.dumps(entries, indent=2) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
