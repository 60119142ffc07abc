"""Write reports/distillation.md: a guided teacher against its guidance-distilled and progressive students.

    .venv/bin/python scripts/distillation_report.py --teacher runs/digits --stage1 runs/digits-distilled \\
        --stage2 runs/digits-ddim8 runs/digits-ddim4 --out reports/distillation.md

For every w (default 0, 0.5, 1, 2, 4), in ONE process with the same threads, alternating the order of the models
from one w to the next so that no model always runs first (warm caches) or last:

* the teacher with classifier-free guidance, DPM-Solver++(2M) at ``--steps`` (default 25): 2 rows per guided
  step (1 at w = 0, which is also the teacher's UNGUIDED cost);
* the stage-1 student (``student.at(w)``), same sampler and steps: 1 row per step at every w;
* each stage-2 student with its own recorded DDIM steps: 1 row per step.

Each row: FID (the data set's feature network) ± its bootstrap spread at N samples, IS and network rows (NFE) per
image, from ``cfgdiff.evaluation.sweep.run_sweep`` with the same per-sample seeds; and seconds per image from a separate
timing phase: ``--timing-repeats`` rounds, each timing one chunk of ``--timing-batch`` images of every
(w, model) in a rotating order, the median per (w, model) (the sweep's own sampling time is in the JSON).
Then the training cost of each stage from its run's loss.jsonl, and the targets:

1. stage 1: seconds per image of the guided student (w > 0) <= 1.05 x the teacher's unguided seconds per image
   (w = 0, same sampler and steps), at an FID no worse than the teacher's at that w plus the teacher's spread;
2. the 8-step stage-2 student: FID within 25 % of the teacher's 25-step FID (<= 1.25 x) at each w.

``--quick`` (few samples, w in {0, 2}, small bootstrap) proves the script on tiny runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from cfgdiff.distillation import DISTILLATION_KEY, load_student
from cfgdiff.distillation.evaluate import sweep_student
from cfgdiff.distillation.run import stage_cost
from cfgdiff.evaluation.sweep import run_sweep
from cfgdiff.runtime.checkpoint import read_metadata, resolve_checkpoint
from cfgdiff.training import CHECKPOINT_FILE, load_model


def _scorer(meta: dict, *, device: str, bootstrap: int, seed: int):
    """FID vs the training split (± bootstrap spread) and vs the test split, IS: the scorer ``cfgdiff eval`` uses."""
    from cfgdiff.data import DataSpec, load_dataset
    from cfgdiff.evaluation.features import feature_extractor_for
    from cfgdiff.evaluation.metrics import ImageScorer, reference_statistics

    spec = DataSpec.from_json(meta["data_spec"]) if meta.get("data_spec") else DataSpec(source=meta["data"])
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    if not train.is_image:
        raise SystemExit("distillation_report.py scores images (FID, IS); this run's data are not images")
    extractor = feature_extractor_for(spec, None, None, data_shape=train.data_shape, device=device)
    return ImageScorer(extractor, reference_statistics(train, "train", extractor),
                       reference_statistics(test, "test", extractor), bootstrap=bootstrap, seed=seed), spec


def _fmt(value, digits=3) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _pm(value, std) -> str:
    return _fmt(value) + (f" ± {_fmt(std)}" if std is not None else "")


def distill_command(run_dir: Path) -> str:
    """The ``cfgdiff distill`` command that makes a run like ``run_dir``, from its resolved config."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    parts = ["cfgdiff distill", shlex.quote(config["teacher"])]
    if config["stage"] == "progressive":
        parts += ["--progressive", "--steps-from", str(config["steps_from"])]
    parts += ["--w-range", f"{config['w_min']:g},{config['w_max']:g}", "--run-dir", shlex.quote(str(run_dir)),
              "--steps", str(config["steps"]), "--batch-size", str(config["batch_size"]), "--lr", f"{config['lr']:g}"]
    return " ".join(parts)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_models(args: argparse.Namespace, teacher, entries) -> dict[tuple[str, float], float]:
    """Median seconds per image of every (model, w): ``--timing-repeats`` rounds over all pairs, the pairs'
    order rotated from round to round, each timing one chunk of ``--batch-size`` class-balanced images."""
    from cfgdiff.sampling.pipeline import GuidedRun

    labels = torch.arange(args.timing_batch) % teacher.num_classes
    pairs = [(key, w, student, sampler, steps) for key, student, sampler, steps in entries for w in args.w]
    times: dict[tuple[str, float], list[float]] = {(key, w): [] for key, w, *_ in pairs}
    for r in range(args.timing_repeats + 1):  # round 0 warms up and is not counted
        shift = r % len(pairs)
        for key, w, student, sampler, steps in pairs[shift:] + pairs[:shift]:
            run = GuidedRun(teacher if student is None else student, sampler=sampler, steps=steps,
                            batch_size=args.timing_batch, device=args.device,
                            sampler_options={"clip_x": teacher.x_bound})
            _sync(args.device)
            t0 = time.perf_counter()
            run.samples(labels, w, seed=args.seed)
            _sync(args.device)
            if r:
                times[(key, w)].append((time.perf_counter() - t0) / labels.shape[0])
    return {pair: float(torch.tensor(v).median()) for pair, v in times.items()}


def measure(args: argparse.Namespace) -> dict:
    """Every (w, model) row, measured in this process; returns the JSON record of the report."""
    torch.set_num_threads(args.threads)
    teacher = load_model(args.teacher, device=args.device)
    meta = read_metadata(resolve_checkpoint(args.teacher, CHECKPOINT_FILE))
    scorer, spec = _scorer(meta, device=args.device, bootstrap=args.bootstrap, seed=args.seed)
    stage1 = load_student(args.stage1, device=args.device) if args.stage1 else None
    stage2 = [load_student(path, device=args.device) for path in args.stage2]
    models = [("teacher", "CFG teacher", None)]
    if stage1 is not None:
        models.append(("stage1", f"stage-1 student ({args.stage1})", stage1))
    models += [(f"stage2-{s.sampling['steps']}", f"stage-2 student, {s.sampling['steps']} steps ({path})", s)
               for s, path in zip(stage2, args.stage2, strict=True)]
    common = dict(n=args.n, scorer=scorer, seed=args.seed, batch_size=args.batch_size, grid_per_class=0,
                  device=args.device)
    clip = {"clip_x": teacher.x_bound}
    rows = []
    for i, w in enumerate(args.w):
        order = models if i % 2 == 0 else models[::-1]  # alternate: no model always first or last
        for key, label, student in order:
            if key == "teacher":
                result = run_sweep(teacher, [w], steps=args.steps, sampler="dpmpp_2m", **common, **clip)
                sampler, steps = "dpmpp_2m", args.steps
            elif key == "stage1":
                result = sweep_student(student, [w], steps=args.steps, sampler="dpmpp_2m", **common, **clip)
                sampler, steps = "dpmpp_2m", args.steps
            else:
                sampler, steps = student.sampling["sampler"], int(student.sampling["steps"])
                result = sweep_student(student, [w], steps=steps, sampler=sampler, **common, **clip)
            r = result.rows[0]
            rows.append({"w": float(w), "model": key, "label": label, "sampler": sampler, "steps": steps,
                         "n": r.n, "fid": r.fid, "fid_std": getattr(r, "fid_std", None),
                         "fid_test": getattr(r, "fid_test", None), "inception_score": r.inception_score,
                         "nfe_per_sample": r.nfe_per_sample, "sweep_seconds_per_sample": r.seconds_per_sample})
            print(f"w = {w:g} {label}: FID {_pm(r.fid, getattr(r, 'fid_std', None))}, NFE {r.nfe_per_sample:g}, "
                  f"{r.seconds_per_sample * 1e3:.2f} ms/image", file=sys.stderr, flush=True)
    entries = [(key, student, *((student.sampling["sampler"], int(student.sampling["steps"])) if key.startswith(
        "stage2") else ("dpmpp_2m", args.steps))) for key, _, student in models]
    timing = time_models(args, teacher, entries)
    for row in rows:
        row["seconds_per_sample"] = timing[(row["model"], row["w"])]
    costs = {"teacher": stage_cost(args.teacher)}
    if args.stage1:
        costs["stage1"] = stage_cost(args.stage1)
    for s, path in zip(stage2, args.stage2, strict=True):
        costs[f"stage2-{s.sampling['steps']}"] = {**stage_cost(path), "teacher_steps": s.info.get("teacher_steps")}
    fid_name = scorer.meta(args.n).get("fid_name", "FID")
    return {"rows": rows, "costs": costs, "fid_name": fid_name, "data": spec.source, "device": args.device,
            "threads": args.threads, "timing_repeats": args.timing_repeats,
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "models": {key: label for key, label, _ in models},
            "commands": [distill_command(path) for path in ([args.stage1] if args.stage1 else []) + args.stage2],
            "chain": [s.describe() for s in ([stage1] if stage1 else []) + stage2]}


def targets(record: dict) -> list[str]:
    """Plain statements of which targets hold."""
    rows = record["rows"]
    get = {(r["model"], r["w"]): r for r in rows}
    lines = []
    ws = sorted({r["w"] for r in rows})
    unguided = get.get(("teacher", 0.0))
    if "stage1" in record["models"] and unguided is not None:
        for w in [w for w in ws if w > 0]:
            s, t = get[("stage1", w)], get[("teacher", w)]
            ratio = s["seconds_per_sample"] / unguided["seconds_per_sample"]
            spread = t["fid_std"] or 0.0
            cost_ok, fid_ok = ratio <= 1.05, s["fid"] <= t["fid"] + spread
            lines.append(
                f"- stage 1, w = {w:g}: cost {s['seconds_per_sample'] * 1e3:.2f} ms/image = {ratio:.2f} x the "
                f"teacher's unguided {unguided['seconds_per_sample'] * 1e3:.2f} ms ({'holds' if cost_ok else 'FAILS'}: "
                f"<= 1.05 x; NFE {s['nfe_per_sample']:g} vs guided teacher {t['nfe_per_sample']:g}); FID "
                f"{_fmt(s['fid'])} vs teacher {_pm(t['fid'], t['fid_std'])} ({'holds' if fid_ok else 'FAILS'}: within "
                "the teacher's spread or better)")
    elif "stage1" not in record["models"]:
        lines.append("- stage 1: no stage-1 run given; not checked")
    eight = "stage2-8"
    if eight in record["models"]:
        for w in ws:
            s, t = get[(eight, w)], get[("teacher", w)]
            if t["steps"] != 25:
                lines.append(f"- stage 2 (8 steps), w = {w:g}: the teacher ran {t['steps']} steps, not 25; not checked")
                continue
            ok = s["fid"] <= 1.25 * t["fid"]
            lines.append(f"- stage 2, 8 DDIM steps, w = {w:g}: FID {_fmt(s['fid'])} vs the teacher's 25-step "
                         f"{_fmt(t['fid'])} = {s['fid'] / t['fid']:.2f} x ({'holds' if ok else 'FAILS'}: <= 1.25 x)")
    else:
        lines.append("- stage 2: no 8-step student given; the 25 % target is not checked")
    return lines


def write_markdown(record: dict, path: Path, *, quick: bool) -> None:
    fid_name = record["fid_name"]
    lines = ["# Guidance distillation and progressive distillation" + (" (--quick: numbers mean nothing)" if quick
                                                                          else ""), ""]
    lines += [f"- command: `{record['command']}`",
              f"- data: {record['data']}; device {record['device']}, {record['threads']} thread(s); every row from one "
              "process, the order of the models alternating from one w to the next",
              f"- s / image: median over {record['timing_repeats']} timed chunks per (w, model), all pairs timed in "
              "turn with the order rotated each round (after one warm-up round); the sweep's own sampling time "
              "per image is in the JSON",
              f"- FID is {fid_name}; ± is its bootstrap spread over resamples of the N samples; N in the table",
              "- teacher: classifier-free guidance, 2 network rows per guided step (1 at w = 0: the teacher's unguided "
              "cost); students: `student.at(w)`, 1 row per step at every w"]
    lines += [f"- distilled: {d}" for d in record["chain"]]
    lines += ["", f"| w | model | sampler | steps | NFE / image | s / image | {fid_name} (N) | FID vs test | IS |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['w']:g} | {r['model']} | {r['sampler']} | {r['steps']} | {r['nfe_per_sample']:g} | "
                     f"{r['seconds_per_sample'] * 1e3:.2f} ms | {_pm(r['fid'], r['fid_std'])} ({r['n']}) | "
                     f"{_fmt(r['fid_test'])} | {_fmt(r['inception_score'])} |")
    lines += ["", "## How the runs were made (from each run's config.json)", "", "```",
              *record.get("commands", []), "```"]
    lines += ["", "## Training cost", "", "| run | steps | wall time | s / step |", "|---|---|---|---|"]
    for key, cost in record["costs"].items():
        lines.append(f"| {key} | {cost['steps']:.0f} | {cost['seconds'] / 60:.1f} min | "
                     f"{_fmt(cost['seconds_per_step'])} |")
    lines += ["", "(from each run's loss.jsonl: the logged intervals' steps / steps_per_sec; the teacher's own "
              "training for comparison)", "", "## Targets", "", *targets(record), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, required=True, help="the classifier-free-guided run (e.g. runs/digits)")
    p.add_argument("--stage1", type=Path, default=None, help="its guidance-distilled student (stage 1)")
    p.add_argument("--stage2", type=Path, nargs="*", default=[], help="progressive students (e.g. the 8- and 4-step)")
    p.add_argument("--w", type=lambda t: [float(v) for v in t.split(",")], default=[0.0, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver++(2M) steps of the teacher and stage 1")
    p.add_argument("--n", type=int, default=2000, help="samples per (w, model), class-balanced")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples of the FID spread")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing-repeats", type=int, default=3, help="timed rounds of one chunk per (w, model)")
    p.add_argument("--timing-batch", type=int, default=250, help="images per timed chunk")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("reports/distillation.md"))
    p.add_argument("--quick", action="store_true", help="N = 100, w in {0, 2}, 10 bootstrap draws: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.w, args.bootstrap, args.timing_repeats, args.timing_batch = 100, [0.0, 2.0], 10, 2, 50
    for path in [args.stage1, *args.stage2]:
        if path is not None and not read_metadata(resolve_checkpoint(path, CHECKPOINT_FILE)).get(DISTILLATION_KEY):
            raise SystemExit(f"{path} is not a distilled run")
    t0 = time.perf_counter()
    record = measure(args)
    record["seconds"] = time.perf_counter() - t0
    write_markdown(record, args.out, quick=args.quick)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')} ({record['seconds']:.0f} s)")
    for line in targets(record):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
