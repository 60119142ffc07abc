"""One table of several ``cfgdiff eval`` sweeps of the same w (e.g. fp32 against bf16, CFG against GFT):

    python scripts/sweep_table.py fp32=runs/bf16-fmnist/fp32 bf16=runs/bf16-fmnist/bf16 --out reports/x.md

Each LABEL=DIR is an eval output folder (its ``results.json``). Per w, one line per sweep: NFE per sample, FID ±
bootstrap std, KID ± std over subsets, precision / recall / density / coverage ± their standard errors, IS and
milliseconds per sample. Below the table, per w, each later sweep against the first: the difference of every
figure that has a spread, called "inside the spread" when it is under two combined spreads
(√(s₁² + s₂²)), else "beyond". The sweeps must hold the same N and seed (like with like); the script refuses
others.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

FIGURES = (("fid", "fid_std", "FID", 3), ("kid", "kid_std", "KID", 4), ("precision", "precision_std", "precision", 3),
           ("recall", "recall_std", "recall", 3), ("density", "density_std", "density", 3),
           ("coverage", "coverage_std", "coverage", 3))


def _pm(value: float | None, std: float | None, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def load(folder: Path) -> dict[str, Any]:
    result = json.loads((folder / "results.json").read_text())
    return {"meta": result["meta"], "rows": {float(row["w"]): row for row in result["rows"]}}


def compare(first: dict[str, Any], other: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(figure, difference other − first, combined spread, inside two combined spreads) for every figure both
    rows have with a spread."""
    out = []
    for key, std_key, name, _ in FIGURES:
        a, b = first.get(key), other.get(key)
        sa, sb = first.get(std_key), other.get(std_key)
        if None in (a, b, sa, sb):
            continue
        spread = math.hypot(sa, sb)
        out.append((name, b - a, spread, abs(b - a) < 2 * spread))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", help="LABEL=DIR, the first is the reference")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file")
    parser.add_argument("--title", default="Sweeps compared")
    parser.add_argument("--command", action="append", default=[], help="a command that made the sweeps")
    args = parser.parse_args()
    sweeps = []
    for item in args.sweeps:
        label, _, folder = item.partition("=")
        if not folder:
            parser.error(f"each sweep is LABEL=DIR, got {item!r}")
        sweeps.append((label, load(Path(folder))))
    ws = sorted(set.intersection(*(set(s["rows"]) for _, s in sweeps)))
    if not ws:
        parser.error("the sweeps share no w")
    n_seed = {(s["rows"][w].get("n"), s["rows"][w].get("seed")) for _, s in sweeps for w in ws}
    if len(n_seed) != 1:
        parser.error(f"the sweeps differ in (N, seed): {sorted(n_seed, key=str)}; compare like with like")
    n, seed = n_seed.pop()
    lines = [f"# {args.title}", "", *[f"- run: `{c}`" for c in args.command],
             f"- N = {n} samples per w, seed {seed} for every sweep; FID ± bootstrap std, KID ± std over subsets, "
             "precision/recall/density/coverage ± standard error given the other set", "",
             "| w | sweep | NFE / sample | " + " | ".join(name for _, _, name, _ in FIGURES) + " | IS | ms / sample |",
             "|" + "---|" * (5 + len(FIGURES))]
    for w in ws:
        for label, sweep in sweeps:
            row = sweep["rows"][w]
            cells = [_pm(row.get(k), row.get(s), d) for k, s, _, d in FIGURES]
            ms = row.get("seconds_per_sample")
            lines.append(f"| {w:g} | {label} | {row.get('nfe_per_sample', math.nan):g} | " + " | ".join(cells)
                         + f" | {_pm(row.get('inception_score'), None, 3)} | "
                         + ("–" if ms is None else f"{1e3 * ms:.2f}") + " |")
    lines += ["", "Differences against the first sweep (inside: under two combined spreads):", ""]
    verdicts = []
    for w in ws:
        base = sweeps[0][1]["rows"][w]
        for label, sweep in sweeps[1:]:
            parts = compare(base, sweep["rows"][w])
            verdicts += [inside for *_, inside in parts]
            lines.append(f"- w = {w:g}, {label} − {sweeps[0][0]}: " + "; ".join(
                f"{name} {delta:+.4f} (combined spread {spread:.4f}, {'inside' if inside else 'beyond'})"
                for name, delta, spread, inside in parts))
    lines += ["", f"{sum(verdicts)} of {len(verdicts)} differences inside two combined spreads."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
