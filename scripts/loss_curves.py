"""Training loss curves of runs that differ in one thing (e.g. ``--precision fp32`` against ``bf16``, same seed):

    python scripts/loss_curves.py runs/fmnist-loss-fp32 runs/fmnist-loss-bf16 --labels fp32,bf16 \\
        --out reports/bf16_training

Each run's ``loss.jsonl`` holds the mean training loss of every log interval (``--log-every`` steps). With the
same seed both runs draw the same batches, noise and λ, so the curves differ only by what the one change does.
The question is whether that difference is inside the noise of the curve itself. Written to OUT.md, OUT.json
and OUT.png: per window of steps, each run's mean logged loss ± the standard error of that mean (the
interval-to-interval spread / √intervals); the paired difference (second minus first run) per window with its
standard error over the window's intervals; and the steps per second each run logged.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cfgdiff.evaluation.plotting import save_figure


def read_losses(run_dir: Path) -> dict[int, dict[str, float]]:
    """{step: entry} of the loss lines of ``run_dir/loss.jsonl`` (event lines skipped)."""
    rows = {}
    for line in (run_dir / "loss.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "event" not in entry and "loss" in entry:
            rows[int(entry["step"])] = entry
    return rows


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """The mean of ``values`` and its standard error (sample std / √n)."""
    n = len(values)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (the first is the reference)")
    parser.add_argument("--labels", default=None, help="comma-separated names of the runs (default: folder names)")
    parser.add_argument("--windows", type=int, default=6, help="windows of steps in the table (default 6)")
    parser.add_argument("--command", action="append", default=[], help="a command that made the runs")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error("--labels needs one name per run")
    logs = [read_losses(run) for run in args.runs]
    steps = sorted(set.intersection(*(set(log) for log in logs)))
    if len(steps) < 2 * args.windows:
        parser.error(f"the runs share {len(steps)} logged steps, too few for {args.windows} windows")
    loss = np.array([[log[s]["loss"] for s in steps] for log in logs])  # [runs, logged steps]
    speed = [float(np.mean([log[s]["steps_per_sec"] for s in steps])) for log in logs]
    bounds = np.array_split(np.arange(len(steps)), args.windows)
    table = []
    for index in bounds:
        row = {"steps": f"{steps[index[0]]}–{steps[index[-1]]}", "runs": [mean_se(loss[r, index]) for r in
                                                                           range(len(logs))],
               "differences": [mean_se(loss[r, index] - loss[0, index]) for r in range(1, len(logs))]}
        table.append(row)
    head = "| logged steps | " + " | ".join(f"{label} loss" for label in labels) + " | " + " | ".join(
        f"{label} − {labels[0]}" for label in labels[1:]) + " |"
    lines = [f"# Training loss: {' against '.join(labels)}", "",
             *[f"- run: `{command}`" for command in args.command],
             f"- {len(steps)} logged intervals shared by the runs; each figure is a mean over the window's intervals "
             "± its standard error; the difference is paired interval by interval",
             "- steps per second (mean of the logged intervals): " + ", ".join(
                 f"{label} {rate:.2f}" for label, rate in zip(labels, speed, strict=True)), "",
             head, "|" + "---|" * (1 + len(labels) + len(labels) - 1)]
    for row in table:
        cells = [f"{m:.4f} ± {se:.2g}" for m, se in row["runs"]] + [
            f"{m:+.5f} ± {se:.2g}" for m, se in row["differences"]]
        lines.append(f"| {row['steps']} | " + " | ".join(cells) + " |")
    whole = [mean_se(loss[r] - loss[0]) for r in range(1, len(logs))]
    # interval-to-interval noise of one curve, over its second half (where the trend no longer dominates)
    noise = float(np.std(np.diff(loss[0, len(steps) // 2:]), ddof=1) / math.sqrt(2))
    lines += ["", f"Interval-to-interval noise of the {labels[0]} curve over its second half (std of successive "
              f"differences / √2): {noise:.4f}."]
    for label, (m, se) in zip(labels[1:], whole, strict=True):
        lines.append(f"Over all intervals, {label} − {labels[0]} = {m:+.5f} ± {se:.2g} (paired), "
                     f"{abs(m) / noise:.2f} of that noise.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"labels": labels, "steps": steps, "loss": loss.tolist(), "steps_per_sec": speed, "windows": table,
         "noise": noise, "commands": args.command}, indent=1) + "\n")
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for label, curve in zip(labels, loss, strict=True):
        axes.plot(steps, curve, label=label, linewidth=1)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss (mean over a log interval)")
    axes.set_yscale("log")
    axes.legend()
    save_figure(figure, args.out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
