"""The report of ``scripts/adaptive_study.sh``: what adaptive guidance, LinearAG and a guidance interval save in
network evaluations at w = 1, and where their samples land between the conditional model (CFG at w = 0) and full
CFG at w = 1.

    python scripts/adaptive_report.py runs/adaptive --out reports/adaptive_guidance.md

Reads STUDY/NAME/results.json (``cfgdiff eval``) and STUDY/samples/NAME.npz (``cfgdiff sample``, the same seed for
every setting, so sample i starts from the same noise in each). Besides eval's figures, two paired measures per
setting against plain CFG's samples x_0 (w = 0) and x_1 (w = 1):

* the guidance kept, g_i = ⟨x_i − x_0,i, x_1,i − x_0,i⟩ / ‖x_1,i − x_0,i‖² (0: the conditional model's sample, 1:
  full CFG's; > 1: further along the guidance direction), mean ± standard error over samples;
* the RMS pixel distance to full CFG's sample, mean ± standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cfgdiff.cli.sample import read_samples

SETTINGS = {  # folder prefix -> how the table names it
    "cfg": "CFG", "adaptive-": "adaptive, γ = ", "linear-ag-": "LinearAG, f = ", "interval-": "interval σ > ",
}


def _label(name: str, w: float) -> str:
    if name == "cfg":
        return f"CFG, w = {w:g}"
    for prefix, text in SETTINGS.items():
        if name.startswith(prefix) and prefix != "cfg":
            return text + name[len(prefix):] + ", w = 1"
    return name


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def paired(x: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> dict[str, tuple[float, float]]:
    """The guidance kept g and the RMS distance to x1, per sample (rows), as (mean, standard error)."""
    x, x0, x1 = (a.reshape(a.shape[0], -1).astype(np.float64) for a in (x, x0, x1))
    step = x1 - x0
    kept = ((x - x0) * step).sum(axis=1) / np.maximum((step * step).sum(axis=1), 1e-12)
    rms = np.sqrt(((x - x1) ** 2).mean(axis=1))
    return {"kept": _mean_se(kept), "rms_to_cfg": _mean_se(rms)}


def rows(study: Path) -> list[dict[str, Any]]:
    cfg_samples, cfg_fields = read_samples(study / "samples" / "cfg.npz")
    ws = [float(w) for w in cfg_fields["w"]]
    x0, x1 = np.asarray(cfg_samples[ws.index(0.0)]), np.asarray(cfg_samples[ws.index(1.0)])
    out = []
    for folder in sorted(p for p in study.iterdir() if (p / "results.json").is_file()):
        results = json.loads((folder / "results.json").read_text())
        samples, fields = read_samples(study / "samples" / f"{folder.name}.npz")
        drawn = {float(w): np.asarray(s) for w, s in zip(fields["w"], samples, strict=True)}
        for row in results["rows"]:
            entry = {"name": folder.name, "label": _label(folder.name, row["w"]), **row}
            entry.update(paired(drawn[float(row["w"])], x0, x1))
            entry["command"] = results["meta"].get("command")
            entry["meta"] = {k: results["meta"].get(k) for k in ("data", "fid_name", "run_dir", "train_step")}
            out.append(entry)
    order = {"cfg": 0, "adaptive": 1, "linear-ag": 2, "interval": 3}
    return sorted(out, key=lambda r: (order.get(r["name"].rsplit("-", 1)[0], 9), r["nfe_per_sample"], r["w"]))


def _pm(pair: tuple[float, float] | None, digits: int = 3) -> str:
    return "–" if pair is None else f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def table(entries: list[dict[str, Any]]) -> list[str]:
    lines = ["| setting | NFE / sample | FID ± bootstrap std | KID ± std | IS | precision | recall | guidance kept g | "
             "RMS to CFG w = 1 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in entries:
        lines.append(f"| {r['label']} | {r['nfe_per_sample']:.2f} | {_pm((r['fid'], r['fid_std']))} | "
                     f"{_pm((r['kid'], r['kid_std']), 4)} | {r['inception_score']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {_pm(r['kept'])} | {_pm(r['rms_to_cfg'])} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", type=Path, help="the OUT_DIR of scripts/adaptive_study.sh")
    p.add_argument("--out", type=Path, required=True, help="Markdown report path (JSON beside it)")
    p.add_argument("--command", default=None, help="the command that made the study, for the report")
    args = p.parse_args(argv)
    entries = rows(args.study)
    n, meta = entries[0]["n"], entries[0]["meta"]
    text = ["# Adaptive guidance, LinearAG and guidance intervals: network evaluations against guidance kept", "",
            f"Command: `{args.command or 'scripts/adaptive_study.sh'}` (then `python scripts/adaptive_report.py`). "
            f"Data {meta['data']}, model {meta['run_dir']} (step {meta['train_step']}), N = {n} per row, 16 "
            f"DPM-Solver++(2M) steps, seed 0 for every row. {meta['fid_name']} against the training split, ± its "
            "bootstrap std over 100 resamples; KID ± std "
            "over 100 subsets; precision/recall at k = 3. The paired columns compare each setting's samples with "
            "plain CFG's from the same noise: g = ⟨x − x₀, x₁ − x₀⟩/‖x₁ − x₀‖² per sample (0 = CFG at w = 0, 1 = "
            "CFG at w = 1) and the RMS pixel distance to CFG at w = 1 (pixels in [−1, 1]), mean ± standard error.",
            "", *table(entries), "", "Eval commands, one per row group:", ""]
    for command in dict.fromkeys(r["command"] for r in entries if r.get("command")):
        text.append(f"- `{command}`")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(entries, indent=1, default=str), encoding="utf-8")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
