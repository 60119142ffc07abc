"""Write reports/{tradeoff,p_uncond,steps,classifier_guidance}.md (+ PNG, CSV) from `cfgdiff eval` outputs.

    .venv/bin/python scripts/write_reports.py --studies runs/studies --out reports

Reads each study's results.json (written by `cfgdiff eval`, which records its exact command and wall time),
tabulates them like the paper's Tables 1 and 2, checks the paper's shape and says plainly where it does not hold.
A hand-written discussion in reports/notes/NAME.md, if present, is appended to reports/NAME.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from pathlib import Path

from cfgdiff.evaluation.plotting import metrics_vs_w_plot, tradeoff_plot
from cfgdiff.evaluation.sweep import best_row, load_sweep


def _load(path: Path):
    title, meta, rows = load_sweep(path / "results.json")
    return {"title": title, "meta": meta, "rows": rows, "dir": path}


def _train_seconds(log: Path) -> str:
    if not log.is_file():
        return "?"
    m = re.findall(r"(\d+) s; checkpoint in|done: step \d+, (\d+) s", log.read_text(errors="replace"))
    if not m:
        return "?"
    value = next(v for v in m[-1] if v)
    return f"{int(value) / 60:.1f} min"


def _curve(rows):
    """(ws, FIDs, ISs) of a sweep's rows: one curve for the plotting helpers."""
    return [r.w for r in rows], [r.fid for r in rows], [r.inception_score for r in rows]


def _write_csv(path: Path, key: str, groups, fields: list[str]) -> None:
    """One CSV of every row of every sweep, each row prefixed by its group's key value."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([key, *fields])
        for value, rows in groups:
            for r in rows:
                writer.writerow([value, *(getattr(r, name) for name in fields)])


def shape_check(study) -> list[str]:
    """The paper's shape, tested on one sweep; each line says whether it holds."""
    rows = study["rows"]
    by_w = {r.w: r for r in rows}
    fid_name = study["meta"]["fid_name"]
    lines = []
    best = best_row(rows)
    w0 = by_w.get(0.0)
    if w0 is not None:
        holds = 0 < best.w <= 1 and best.fid < w0.fid
        lines.append(f"- best {fid_name} at w = {best.w:g} ({best.fid:.3f}) vs w = 0 ({w0.fid:.3f}): "
                     f"{'holds' if holds else 'does NOT hold'} (paper: best at a w in (0, 1], below w = 0)")
    scores = [r.inception_score for r in sorted(rows, key=lambda r: r.w)]
    rising = all(b >= a for a, b in zip(scores, scores[1:], strict=False))
    drops = [f"w={a.w:g}→{b.w:g}" for a, b in zip(sorted(rows, key=lambda r: r.w), sorted(rows, key=lambda r: r.w)[1:],
                                                  strict=False) if b.inception_score < a.inception_score]
    verdict = "holds" if rising else "does NOT hold (falls at " + ", ".join(drops) + ")"
    lines.append(f"- IS rising with w across the grid: {verdict}")
    if 4.0 in by_w:
        ratio = by_w[4.0].fid / best.fid
        lines.append(f"- {fid_name} at w = 4 is {ratio:.1f}× the best: {'holds' if ratio >= 2 else 'weak'}")
    return lines


def _fid_is(r) -> str:
    return f"{r.fid:.2f} / {r.inception_score:.2f}"


def tradeoff_report(main, out: Path) -> str:
    meta = main["meta"]
    shutil.copy(main["dir"] / "tradeoff.png", out / "tradeoff.png")
    shutil.copy(main["dir"] / "metrics_vs_w.png", out / "tradeoff_vs_w.png")
    shutil.copy(main["dir"] / "results.csv", out / "tradeoff.csv")
    if (main["dir"] / "grids_all.png").is_file():
        shutil.copy(main["dir"] / "grids_all.png", out / "tradeoff_grids.png")
    table = (main["dir"] / "results.md").read_text().split("\n\n", 1)[1]
    return f"""# FID / IS trade-off of the main digits model

Command (sweep wall time {meta['seconds'] / 60:.1f} min on 2 shared CPU cores, one thread):

```
{meta['command']} --out {main['dir']}
```

{table}
Shape against the paper (Table 1, p_uncond = 0.1):

{chr(10).join(shape_check(main))}

![trade-off](tradeoff.png)

![FID and IS against w](tradeoff_vs_w.png)

Samples (same initial noise in every panel; rows are classes 0–9):

![samples per w](tradeoff_grids.png)
"""


def p_uncond_report(studies: dict[str, dict], out: Path, logs: Path) -> str:
    names = [k for k in ("0.1", "0.2", "0.5") if k in studies]
    first = studies[names[0]]
    fid_name, is_name = first["meta"]["fid_name"], first["meta"]["is_name"]
    ws = [r.w for r in first["rows"]]
    head = "| w | " + " | ".join(f"p_uncond={k}: FID / IS" for k in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    best = {k: best_row(studies[k]["rows"]).fid for k in names}
    for i, w in enumerate(ws):
        cells = []
        for k in names:
            r = studies[k]["rows"][i]
            cell = _fid_is(r)
            cells.append(f"**{cell}**" if r.fid == best[k] else cell)
        lines.append(f"| {w:g} | " + " | ".join(cells) + " |")
    curves = {f"p_uncond = {k}": _curve(studies[k]["rows"]) for k in names}
    floor = first["meta"].get("fid_floor")
    tradeoff_plot(curves, out / "p_uncond.png", fid_label=fid_name, is_label=is_name, fid_floor=floor,
                  title="Trade-off by p_uncond (points labelled by w)")
    metrics_vs_w_plot(curves, out / "p_uncond_vs_w.png", fid_label=fid_name, is_label=is_name, fid_floor=floor)
    _write_csv(out / "p_uncond.csv", "p_uncond", [(k, studies[k]["rows"]) for k in names],
               ["w", "fid", "inception_score", "n", "steps"])
    commands = "\n".join(studies[k]["meta"]["command"] + f" --out {studies[k]['dir']}" for k in names)
    timing = "\n".join(
        f"- p_uncond = {k}: training "
        f"{_train_seconds(logs / f'train-p{k}.log') if k != '0.1' else 'by the lead (runs/digits)'}, "
        f"step {studies[k]['meta']['train_step']}; sweep {studies[k]['meta']['seconds'] / 60:.1f} min"
        for k in names)
    shapes = "\n".join(f"p_uncond = {k}:\n\n" + "\n".join(shape_check(studies[k])) + "\n" for k in names)
    r0 = first["rows"][0]
    best_line = ", ".join(f"p_uncond = {k}: {best[k]:.2f} at w = {best_row(studies[k]['rows']).w:g}" for k in names)
    return f"""# Table 1 analogue: p_uncond on digits

{fid_name} / {is_name}, {r0.n} samples per cell (class-balanced, equal in every cell), {r0.steps} {r0.sampler}
steps (v = 0.3), seed {r0.seed}; the three models differ only in p_uncond (identical command otherwise, 4000
training steps each). Bold: each model's best FID. FID floor (digits test split vs training split):
{floor:.3f}; real training data: {is_name} = {first['meta']['reference_is']:.2f}.

{chr(10).join(lines)}

Best FID per model: {best_line}.

Commands (equal training steps; the p_uncond = 0.1 model is the main run `cfgdiff train --data digits --run-dir
runs/digits`, the others add `--p-uncond 0.2` / `--p-uncond 0.5`):

```
{commands}
```

Time on this machine (2 CPU cores shared with other jobs, one thread per job):

{timing}

Shape against the paper:

{shapes}
![p_uncond trade-off](p_uncond.png)

![p_uncond FID and IS against w](p_uncond_vs_w.png)
"""


def steps_report(studies: dict[int, dict], out: Path) -> str:
    steps = sorted(studies)
    first = studies[steps[0]]
    fid_name, is_name = first["meta"]["fid_name"], first["meta"]["is_name"]
    ws = [r.w for r in first["rows"]]
    lines = ["| w | " + " | ".join(f"T = {t}: FID / IS" for t in steps) + " |", "|---|" + "---|" * len(steps)]
    for i, w in enumerate(ws):
        lines.append(f"| {w:g} | " + " | ".join(_fid_is(studies[t]["rows"][i]) for t in steps) + " |")
    cost = ["| T | " + " | ".join(f"w = {w:g}: NFE / s per sample" for w in ws) + " | sweep time |",
            "|---|" + "---|" * (len(ws) + 1)]
    for t in steps:
        cells = [f"{r.nfe_per_sample:g} / {r.seconds_per_sample:.3f}" for r in studies[t]["rows"]]
        cost.append(f"| {t} | " + " | ".join(cells) + f" | {studies[t]['meta']['seconds'] / 60:.1f} min |")
    curves = {f"w = {w:g}": (steps, [studies[t]["rows"][i].fid for t in steps],
                             [studies[t]["rows"][i].inception_score for t in steps]) for i, w in enumerate(ws)}
    metrics_vs_w_plot(curves, out / "steps.png", fid_label=fid_name, is_label=is_name,
                      x_label="sampling steps T", x_scale="log2")
    _write_csv(out / "steps.csv", "steps", [(t, studies[t]["rows"]) for t in steps],
               ["w", "fid", "inception_score", "n", "nfe_per_sample", "seconds_per_sample"])
    commands = "\n".join(studies[t]["meta"]["command"] + f" --out {studies[t]['dir']}" for t in steps)
    total = sum(studies[t]["meta"]["seconds"] for t in steps) / 60
    r0 = first["rows"][0]
    return f"""# Table 2 analogue: sampling steps on digits

{fid_name} / {is_name} of the main model (runs/digits, p_uncond = 0.1), {r0.n} samples per cell
(class-balanced, equal in every cell), {r0.sampler} sampler (v = 0.3), seed {r0.seed}, same initial noise in every
cell. FID floor (test vs train split): {first['meta']['fid_floor']:.3f}. The whole table took {total:.1f} min.

{chr(10).join(lines)}

Cost (network evaluations and sampling wall time per sample; a guided step is one batched call of 2B rows, so
T guided steps cost 2T evaluations, as many as 2T unguided steps):

{chr(10).join(cost)}

Commands:

```
{commands}
```

![FID and IS against T](steps.png)
"""


def classifier_report(cfg_study, cls_study, out: Path, logs: Path, classifier_dir: Path) -> str:
    fid_name, is_name = cfg_study["meta"]["fid_name"], cfg_study["meta"]["is_name"]
    curves = {}
    for name, s in (("classifier-free guidance", cfg_study), ("classifier guidance", cls_study)):
        curves[name] = _curve(s["rows"])
    floor = cfg_study["meta"].get("fid_floor")
    tradeoff_plot(curves, out / "classifier_guidance.png", fid_label=fid_name, is_label=is_name, fid_floor=floor,
                  title=f"CFG vs classifier guidance, {cfg_study['rows'][0].steps} steps (points labelled by w)")
    lines = ["| w | CFG: FID / IS | CFG: NFE, s per sample | classifier: FID / IS | classifier: NFE + clf fwd/bwd, "
             "s per sample |", "|---|---|---|---|---|"]
    for a, b in zip(cfg_study["rows"], cls_study["rows"], strict=True):
        lines.append(f"| {a.w:g} | {_fid_is(a)} | {a.nfe_per_sample:g}, {a.seconds_per_sample:.3f} | {_fid_is(b)} | "
                     f"{b.nfe_per_sample:g} + {b.classifier_evals_per_sample:g}, {b.seconds_per_sample:.3f} |")
    _write_csv(out / "classifier_guidance.csv", "guidance", [(st["rows"][0].guidance, st["rows"])
                                                            for st in (cfg_study, cls_study)],
               ["w", "fid", "inception_score", "n", "steps", "nfe_per_sample", "classifier_evals_per_sample",
                "seconds_per_sample"])
    meta_path = classifier_dir / "classifier.safetensors"
    acc = ""
    if meta_path.is_file():
        from cfgdiff.runtime.checkpoint import read_metadata

        m = read_metadata(meta_path)
        acc = ", ".join(f"λ = {k}: {v:.3f}" for k, v in m.get("noisy_test_accuracy", {}).items())
        acc = f"{m.get('step')} steps; held-out accuracy on noised test images {acc}"
    r0 = cfg_study["rows"][0]
    return f"""# Classifier guidance baseline vs classifier-free guidance (digits)

Same diffusion model (runs/digits, p_uncond = 0.1), same sampler ({r0.sampler}, {r0.steps} steps, v = 0.3), same
seed and initial noise, {r0.n} samples per w. Classifier guidance: ε̃ = ε(z, c) - w σ ∇_z log p_φ(c | z_λ) with a
noisy classifier p_φ(c | z_λ, λ) (U-Net down path conditioned on λ, trained on z_λ with the diffusion model's
cosine λ distribution; {acc}; training took {_train_seconds(logs / 'train-classifier.log')}).
CFG: ε̃ = (1 + w) ε(z, c) - w ε(z), no classifier. FID floor {floor:.3f}.

{chr(10).join(lines)}

NFE counts denoiser rows per sample; a classifier step adds one classifier forward and backward pass per sample.

Commands:

```
cfgdiff train-classifier --data digits --run-dir {classifier_dir}
{cfg_study['meta']['command']} --out {cfg_study['dir']}
{cls_study['meta']['command']} --out {cls_study['dir']}
```

Sweep time: CFG {cfg_study['meta']['seconds'] / 60:.1f} min, classifier guidance
{cls_study['meta']['seconds'] / 60:.1f} min.

Shape, classifier-free guidance:

{chr(10).join(shape_check(cfg_study))}

Shape, classifier guidance:

{chr(10).join(shape_check(cls_study))}

![CFG vs classifier guidance](classifier_guidance.png)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=Path, default=Path("runs/studies"))
    parser.add_argument("--logs", type=Path, default=Path("runs/logs"))
    parser.add_argument("--classifier", type=Path, default=Path("runs/digits-classifier"))
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    have = {p.name: _load(p) for p in args.studies.iterdir() if (p / "results.json").is_file()}
    written = []
    if "p0.1" in have:
        text = tradeoff_report(have["p0.1"], args.out)
        if "short-600" in have:  # the same sweep on an undertrained model, beside the main one
            short, main_run = have["short-600"], have["p0.1"]
            curves = {f"{name} (step {s['meta']['train_step']})": _curve(s["rows"])
                      for name, s in (("runs/digits", main_run), ("runs/digits-600", short))}
            tradeoff_plot(curves, args.out / "tradeoff_600steps.png", fid_label=short["meta"]["fid_name"],
                          is_label=short["meta"]["is_name"], fid_floor=short["meta"].get("fid_floor"),
                          title="Trade-off: fully trained vs 600-step model (points labelled by w)")
            table = (short["dir"] / "results.md").read_text().split("\n\n", 1)[1]
            text += (f"\n## The same sweep on an undertrained model (600 training steps)\n\n"
                     f"Command: `cfgdiff train --data digits --run-dir runs/digits-600 --steps 600` "
                     f"(2.4 min), then (sweep {short['meta']['seconds'] / 60:.1f} min):\n\n"
                     f"```\n{short['meta']['command']} --out {short['dir']}\n```\n\n{table}\n"
                     + "\n".join(shape_check(short))
                     + "\n\n![trade-off, 600-step vs 4000-step model](tradeoff_600steps.png)\n")
        (args.out / "tradeoff.md").write_text(text)
        written.append("tradeoff.md")
        p = {k.removeprefix("p"): v for k, v in have.items() if re.fullmatch(r"p0\.\d", k)}
        if len(p) > 1:
            (args.out / "p_uncond.md").write_text(p_uncond_report(p, args.out, args.logs))
            written.append("p_uncond.md")
        if "classifier" in have:
            (args.out / "classifier_guidance.md").write_text(
                classifier_report(have["p0.1"], have["classifier"], args.out, args.logs, args.classifier))
            written.append("classifier_guidance.md")
    steps = {int(k.removeprefix("steps-T")): v for k, v in have.items() if k.startswith("steps-T")}
    if steps:
        (args.out / "steps.md").write_text(steps_report(steps, args.out))
        written.append("steps.md")
    for name in written:  # hand-written discussion of each study, kept apart so reruns do not lose it
        with open(args.out / name, "a") as f:
            f.write("\nAll commands ran from the repository root with `OMP_NUM_THREADS=1`, via "
                    "`scripts/run_studies.sh` (train, classifier, main, puncond, steps, cg, reports); the digits "
                    "feature classifier is `scripts/train_digits_classifier.py`.\n")
            note = args.out / "notes" / name
            if note.is_file():
                f.write("\n" + note.read_text())
    print(json.dumps(written))


if __name__ == "__main__":
    main()
