"""Guidance methods side by side: FID (± spread, N) and IS over a grid of w for every method, one trade-off plot.

Runs ``cfgdiff eval`` once per method of ``cfgdiff.guidance.GUIDANCE_METHODS`` at its recommended parameters, with
equal samples, steps, sampler and seeds (so the rows share their initial noise), then writes

* ``OUT/guidance_methods.md``: one table per method (w, FID ± bootstrap std, N, IS, NFE and seconds per image),
  the exact commands, the guide model of autoguidance (size, training steps, training time);
* ``OUT/guidance_methods_tradeoff.png``: FID against IS, one curve per method, points labelled by w;
* ``OUT/guidance_methods/METHOD/``: each method's eval output (results.json, grids/w_*.png: the report links the
  grid of each method at its highest w, where the methods differ most).

CFG++ sweeps its own range, w in [-1, 0] (its λ = w + 1 in [0, 1]); the others sweep the same grid of w.
Autoguidance runs only with ``--guide-run DIR`` (a smaller network or an earlier checkpoint of the same data),
classifier guidance only with ``--classifier DIR``. Arguments after ``--`` go to every ``cfgdiff eval`` (e.g.
``-- --features runs/fashion-features``).

The lead's run (Fashion-MNIST, long):
    python scripts/guidance_report.py runs/fashion --guide-run runs/fashion-small --n 2000 --steps 64 \
        --sampler dpmpp_2m --out reports -- --features runs/fashion-features
A check that it works, on a tiny run (seconds):
    python scripts/guidance_report.py RUN_DIR --quick --out /tmp/guidance_report
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from cfgdiff.cli import main as cfgdiff_main
from cfgdiff.guidance import GUIDANCE_METHODS

W_GRID = [0.0, 0.3, 1.0, 2.0, 4.0, 8.0]
CFGPP_GRID = [-0.8, -0.6, -0.4, -0.2, 0.0]  # λ = 0.2 ... 1.0
QUICK_W_GRID = [0.0, 2.0]
QUICK_CFGPP_GRID = [-0.5, 0.0]


def _fmt(value: float | None, std: float | None = None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    text = f"{value:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None and math.isfinite(std) else "")


def _ws(method: str, quick: bool, w: list[float] | None = None, cfgpp_w: list[float] | None = None) -> list[float]:
    if method == "cfgpp":
        return cfgpp_w or (QUICK_CFGPP_GRID if quick else CFGPP_GRID)
    return w or (QUICK_W_GRID if quick else W_GRID)


def _training_seconds(run_dir: Path) -> float | None:
    """Training wall time estimated from loss.jsonl: Σ (steps in each log interval) / steps_per_sec."""
    log = (run_dir if run_dir.is_dir() else run_dir.parent) / "loss.jsonl"
    if not log.is_file():
        return None
    total, last_step = 0.0, 0
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if "steps_per_sec" not in entry or not entry.get("steps_per_sec"):
            continue
        total += (int(entry["step"]) - last_step) / float(entry["steps_per_sec"])
        last_step = int(entry["step"])
    return total or None


def _describe_model(run_dir: Path) -> str:
    """Size and training of a run (for the autoguidance guide and the main model)."""
    from cfgdiff.training import load_model

    model = load_model(run_dir)
    params = sum(p.numel() for p in model.parameters())
    config = model.config() if callable(getattr(model, "config", None)) else {}
    arch = ", ".join(f"{k} {config[k]}" for k in ("arch", "base_channels", "channel_mults", "hidden", "depth")
                     if k in config)
    seconds = _training_seconds(run_dir)
    cost = f", about {seconds:.0f} s of training (from loss.jsonl's steps/s)" if seconds else ""
    return f"`{run_dir}`: {arch}, {params / 1e6:.3f}M parameters, {getattr(model, 'train_step', 0)} steps{cost}"


def _eval(run_dir: Path, method: str, args: argparse.Namespace, out: Path, extra: list[str]) -> dict[str, Any]:
    ws = _ws(method, args.quick, args.w, args.cfgpp_w)
    argv = ["eval", str(run_dir), "--w=" + ",".join(f"{w:g}" for w in ws), "--n", str(args.n),
            "--steps", str(args.steps), "--sampler", args.sampler, "--seed", str(args.seed),
            "--batch-size", str(args.batch_size), "--device", args.device, "--guidance", method,
            "--out", str(out), "--no-progress"]
    if method == "auto":
        argv += ["--guide-run", str(args.guide_run)]
    if method == "classifier":
        argv += ["--classifier", str(args.classifier)]
    if args.quick:
        argv += ["--bootstrap", "0", "--grid-per-class", "2"]
    argv += extra
    print(f"[guidance_report] cfgdiff {shlex.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    code = cfgdiff_main(argv)
    if code != 0:
        raise SystemExit(f"cfgdiff eval failed for --guidance {method} (exit {code})")
    result = json.loads((out / "results.json").read_text())
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items()) or "none"


def _table(method: str, result: dict[str, Any]) -> list[str]:
    meta, rows = result["meta"], result["rows"]
    fid_name, is_name = meta.get("fid_name", "FID"), meta.get("is_name", "IS")
    spec = GUIDANCE_METHODS[method]
    lines = [f"### {spec.title}: `--guidance {method}`", "",
             f"{spec.formula}. Parameters: {_params_text(meta.get('guidance_params', {}))}. Cost: {spec.cost}.", "",
             f"| w | {fid_name} (± bootstrap std) | N | {is_name} | NFE / image | s / image |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['w']:g} | {_fmt(row.get('fid'), row.get('fid_std'))} | {row['n']} | "
                     f"{_fmt(row.get('inception_score'), row.get('inception_score_std'))} | "
                     f"{row['nfe_per_sample']:g} | {row['seconds_per_sample']:.4f} |")
    lines += ["", f"Command: `{meta.get('command', '')}`", ""]
    return lines


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    scored = [r for r in rows if r.get("fid") is not None and math.isfinite(r["fid"])]
    return min(scored, key=lambda r: r["fid"]) if scored else None


def _summary(results: dict[str, dict[str, Any]]) -> list[str]:
    """The key rows: each method's best FID (and where), and its FID / IS at its highest w."""
    lines = ["| method | best FID (w) | IS there | at its highest w: FID / IS | NFE / image there |",
             "|---|---|---|---|---|"]
    for method, result in results.items():
        rows = result["rows"]
        best, top = _best(rows), rows[-1]
        best_text = f"{_fmt(best['fid'], best.get('fid_std'))} (w = {best['w']:g})" if best else "–"
        is_text = _fmt(best.get("inception_score")) if best else "–"
        lines.append(f"| {method} | {best_text} | {is_text} | w = {top['w']:g}: {_fmt(top.get('fid'))} / "
                     f"{_fmt(top.get('inception_score'))} | {top['nfe_per_sample']:g} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="the trained run to guide")
    p.add_argument("--guide-run", type=Path, default=None, help="autoguidance's weaker run (else auto is skipped)")
    p.add_argument("--classifier", type=Path, default=None, help="a noisy classifier run (else classifier is skipped)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all that apply)")
    p.add_argument("--n", type=int, default=2000, help="samples per w (default 2000)")
    p.add_argument("--steps", type=int, default=64, help="sampling steps (default 64)")
    p.add_argument("--sampler", default="dpmpp_2m", help="sampler (default dpmpp_2m)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default reports)")
    p.add_argument("--w", type=lambda t: [float(v) for v in t.split(",")], default=None,
                   help=f"guidance weights of every method but CFG++ (default {','.join(map(str, W_GRID))})")
    p.add_argument("--cfgpp-w", type=lambda t: [float(v) for v in t.split(",")], default=None,
                   help=f"CFG++'s weights, w in [-1, 0] (default {','.join(map(str, CFGPP_GRID))})")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: n 20, 3 steps, w in {0, 2} (CFG++ {-0.5, 0}), no bootstrap")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps = min(args.n, 20), min(args.steps, 3)
    methods = [m for m in GUIDANCE_METHODS
               if not (m == "auto" and args.guide_run is None) and not (m == "classifier" and args.classifier is None)]
    if args.methods:
        asked = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in asked if m not in GUIDANCE_METHODS]
        if unknown:
            p.error(f"unknown method {unknown[0]!r}; choose from {', '.join(GUIDANCE_METHODS)}")
        methods = [m for m in asked if m in methods]
    root = args.out / "guidance_methods"
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for method in methods:
        results[method] = _eval(args.run_dir, method, args, root / method, extra)
    seconds = time.perf_counter() - t0

    from cfgdiff.evaluation.plotting import tradeoff_plot

    first = next(iter(results.values()))
    meta = first["meta"]
    fid_name, is_name = meta.get("fid_name", "FID"), meta.get("is_name", "IS")
    curves = {m: ([r["w"] for r in res["rows"]], [r["fid"] for r in res["rows"]],
                  [r["inception_score"] for r in res["rows"]]) for m, res in results.items()
              if all(r.get("fid") is not None and r.get("inception_score") is not None for r in res["rows"])}
    plot = args.out / "guidance_methods_tradeoff.png"
    if curves:
        tradeoff_plot(curves, plot, fid_label=fid_name, is_label=is_name, fid_floor=meta.get("fid_floor"),
                      title="Guidance methods: FID / IS trade-off (points labelled by w)")
    row0 = first["rows"][0]
    lines = ["# Guidance methods side by side", "",
             f"- data: {meta.get('data', '?')}; model: {_describe_model(args.run_dir)}",
             f"- every method: N = {row0['n']} class-balanced samples per w, {row0['steps']} {row0['sampler']} steps, "
             f"seed {row0['seed']} (the same initial noise for every method and w); total wall time {seconds:.0f} s",
             f"- command: `python scripts/guidance_report.py {shlex.join(sys.argv[1:] if argv is None else argv)}`"
             + (f" `-- {shlex.join(extra)}`" if extra else "")]
    if meta.get("fid_floor") is not None:
        lines.append(f"- {fid_name} floor at this N (held-out images vs the training split): {_fmt(meta['fid_floor'])}")
    if args.guide_run is not None and "auto" in results:
        lines.append(f"- autoguidance's guide: {_describe_model(args.guide_run)}")
    if args.quick:
        lines.append("- **--quick smoke run**: tiny N and steps; the numbers only show that the pipeline works")
    lines += ["", "## Key rows", "", *_summary(results), ""]
    if curves:
        lines += [f"![trade-off]({plot.name})", ""]
    lines += ["## Per method", ""]
    for method, result in results.items():
        lines += _table(method, result)
        top = result["rows"][-1]["w"]
        grid = root / method / "grids" / f"w_{top:g}.png"
        if grid.is_file():
            lines += [f"Samples at w = {top:g}:", "", f"![{method} at w = {top:g}]({grid.relative_to(args.out)})", ""]
    report = args.out / "guidance_methods.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"wrote {report}" + (f" and {plot}" if curves else "") + f" ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
