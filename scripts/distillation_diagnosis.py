"""Why a distilled student misses its teacher: its held-out error per w, and paired FIDs per sampler.

    .venv/bin/python scripts/distillation_diagnosis.py --teacher runs/digits \\
        --student 4000=runs/digits-distilled --student 8000=runs/digits-distilled-8k \\
        --w 0,2,4 --samplers dpmpp_2m:25,ddim:32,ddim:8 --n 2000 --out reports/distillation_diagnosis.md

Part 1, fit by w (no sampling; stage-1 students only). ``cfgdiff.distillation.evaluate.fit_by_w`` on ``--fit-n``
rows of the held-out test split. At each w of ``--fit-w`` it gives the student's error against the guided teacher,
mse(w) = E||ε_η - ε̃_w||²/D ± its standard error, and that error relative to what guidance adds,
E||ε̃_w - ε_θ(z, c)||²/D. The same (x, c, λ, ε) serve every w and every student. A ``LABEL=PATH`` student may be
a run directory or one of its step-numbered checkpoint files; ``--fit-student`` adds one to part 1 only (to see
whether more training still lowers the error).

Part 2, paired FIDs. The teacher (classifier-free guidance) and every student are sampled at each w with each
``--samplers`` entry (a progressive student only with the sampler and steps it was distilled for). The samples are
class-balanced and sample i of every model starts from the same noise. Each row gives:
- FID (the data set's feature network) ± its bootstrap spread;
- Δ = FID(student) - FID(teacher, same sampler and steps) ± the spread of the difference itself (paired bootstrap:
  one set of multiplicities for both);
- "inside" when |Δ| <= 2 paired spreads, else "better" or "worse".

``--zero-x-at-noise-end`` adds a teacher row per (w, sampler) whose x̂ is set to 0 where λ < -10 (the first step
from λ_min = -20 on every grid here). There x̂ = (z - σ ε̂)/α multiplies the network's error by σ/α ≈ e^{10}, so an
unclipped x̂ is noise and a clipped one is ±1 almost everywhere. Its Δ is against the plain teacher: it says what that
first step costs a few-step DDIM.

The teacher's rows are the fair reference for a student sampled the same way. The distance between the teacher's
samplers (DPM-Solver++(2M) at 25 steps against DDIM at 32 or 8) is what progressive distillation inherits from its
DDIM teacher, not a loss of distillation.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cfgdiff.core.diffusion import alpha_sigma_rows, eps_from_x
from cfgdiff.data import DataSpec, load_dataset
from cfgdiff.distillation import load_student
from cfgdiff.distillation.evaluate import fit_by_w
from cfgdiff.distillation.progressive import NOISE_END_LOGSNR
from cfgdiff.evaluation.features import feature_extractor_for
from cfgdiff.evaluation.metrics import reference_statistics
from cfgdiff.evaluation.metrics.fid import fid_with_spread, paired_bootstrap_difference
from cfgdiff.evaluation.sweep import balanced_labels
from cfgdiff.runtime.checkpoint import read_metadata, resolve_checkpoint
from cfgdiff.sampling.pipeline import GuidedRun
from cfgdiff.training import CHECKPOINT_FILE, load_model


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _samplers(text: str) -> list[tuple[str, int]]:
    out = []
    for part in text.split(","):
        name, _, steps = part.partition(":")
        out.append((name.strip(), int(steps)))
    return out


def _labelled(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"give a student as LABEL=PATH, got {text!r}")
    return label, Path(path)


class ZeroXAtNoiseEnd(torch.nn.Module):
    """An eps_fn whose x̂ is 0 where λ < ``NOISE_END_LOGSNR``: there ε̂ = (z - α·0)/σ, elsewhere the model's ε̂."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        for name in ("num_classes", "data_shape", "class_names", "x_bound"):
            setattr(self, name, getattr(model, name))

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        eps = self.model(z, logsnr, labels)
        logsnr_rows = logsnr.reshape(-1).expand(z.shape[0])
        alpha, sigma = alpha_sigma_rows(logsnr_rows, z)
        noise_end = (logsnr_rows < NOISE_END_LOGSNR).reshape(alpha.shape)
        return torch.where(noise_end, eps_from_x(z=z, x=torch.zeros_like(z), alpha=alpha, sigma=sigma), eps)


def verdict(delta: float, spread: float) -> str:
    """'inside' when |Δ| <= 2 paired spreads, else 'better' (Δ < 0: the student's FID is lower) or 'worse'."""
    if abs(delta) <= 2 * spread:
        return "inside"
    return "better" if delta < 0 else "worse"


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    teacher = load_model(args.teacher, device=args.device)
    meta = read_metadata(resolve_checkpoint(args.teacher, CHECKPOINT_FILE))
    spec = DataSpec.from_json(meta["data_spec"]) if meta.get("data_spec") else DataSpec(source=meta["data"])
    students = [(label, path, load_student(path, device=args.device)) for label, path in args.student]
    fit_only = [(label, path, load_student(path, device=args.device)) for label, path in args.fit_student]
    record: dict = {"command": " ".join(shlex.quote(a) for a in sys.argv), "data": spec.source,
                    "threads": args.threads, "n": args.n, "fit_n": args.fit_n, "seed": args.seed,
                    "students": {label: s.describe() for label, _, s in students + fit_only}, "fit": [], "rows": []}

    # Part 1: fit by w on the held-out split, the same draws for every student.
    test = load_dataset(spec, "test")
    x, labels = test.x[: args.fit_n], test.labels[: args.fit_n]
    for label, _, student in fit_only + students:
        if student.stage != "guidance":
            continue
        ws = [w for w in args.fit_w if w in student.w_range]
        fits = fit_by_w(student, teacher, x, labels, ws, generator=torch.Generator().manual_seed(args.seed),
                        logsnr_schedule=meta.get("train_config", {}).get("logsnr_schedule", "cosine"))
        record["fit"] += [{"student": label, **f.__dict__} for f in fits]
        print(f"fit {label}: " + ", ".join(f"w={f.w:g} {f.mse:.5f}" for f in fits), file=sys.stderr, flush=True)

    # Part 2: paired FIDs, every model from the same noise.
    train = load_dataset(spec, "train")
    extractor = feature_extractor_for(spec, None, args.features, data_shape=train.data_shape, device=args.device)
    reference = reference_statistics(train, "train", extractor).frechet()
    sample_labels = balanced_labels(args.n, teacher.num_classes)
    others = [(label, student) for label, _, student in students]  # compared with the teacher, row by row
    if args.zero_x_at_noise_end:
        others.insert(0, (f"teacher, x̂ = 0 at λ < {NOISE_END_LOGSNR:g}", ZeroXAtNoiseEnd(teacher)))

    def features(model, w: float, sampler: str, steps: int) -> np.ndarray:
        run = GuidedRun(model, sampler=sampler, steps=steps, batch_size=args.batch_size, device=args.device,
                        sampler_options={"clip_x": teacher.x_bound}, precision=args.precision)
        chunks = [extractor(xs.to(args.device))[0].double().cpu() for xs in run.iter_samples(sample_labels, w,
                                                                                           seed=args.seed)]
        return torch.cat(chunks).numpy()

    for w in args.w:
        for sampler, steps in args.samplers:
            t0 = time.perf_counter()
            base = features(teacher, w, sampler, steps)
            (fid, spread), = fid_with_spread(base, [reference], draws=args.bootstrap, seed=args.seed)
            record["rows"].append({"w": w, "model": "teacher", "sampler": sampler, "steps": steps, "fid": fid,
                                   "fid_std": spread})
            for label, student in others:
                own = getattr(student, "sampling", None)
                if own and (sampler, steps) != (own["sampler"], int(own["steps"])):
                    continue
                if hasattr(student, "w_range") and w not in student.w_range:
                    continue
                feats = features(student, w, sampler, steps)
                (s_fid, s_spread), = fid_with_spread(feats, [reference], draws=args.bootstrap, seed=args.seed)
                deltas = paired_bootstrap_difference(feats, base, reference, draws=args.bootstrap, seed=args.seed)
                delta, delta_std = s_fid - fid, float(deltas.std(ddof=1))
                record["rows"].append({"w": w, "model": label, "sampler": sampler, "steps": steps, "fid": s_fid,
                                       "fid_std": s_spread, "delta": delta, "delta_std": delta_std,
                                       "verdict": verdict(delta, delta_std)})
            print(f"w = {w:g} {sampler}:{steps} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    return record


def write_markdown(record: dict, path: Path) -> None:
    lines = ["# Distillation diagnosis: held-out fit per w, paired FIDs per sampler", "",
             f"- command: `{record['command']}`",
             f"- data: {record['data']}; {record['threads']} thread(s); seed {record['seed']}"]
    lines += [f"- {label}: {text}" for label, text in record["students"].items()]
    if record["fit"]:
        lines += ["", f"## Fit by w (held-out test split, {record['fit_n']} rows, the same draws for every student)",
                  "", "mse = E‖ε_η − ε̃_w‖²/D ± standard error; relative = mse / E‖ε̃_w − ε_θ(z, c)‖²/D (what "
                  "guidance adds at w)", "", "| student | w | mse | relative |", "|---|---|---|---|"]
        for f in record["fit"]:
            rel = "–" if f["relative"] is None else f"{f['relative']:.4f}"
            lines.append(f"| {f['student']} | {f['w']:g} | {f['mse']:.5f} ± {f['mse_se']:.5f} | {rel} |")
    lines += ["", f"## Paired FIDs (N = {record['n']} per row, the same noise for every model)", "",
              "Δ = FID(student) − FID(teacher, same sampler and steps) ± the paired bootstrap spread of Δ; "
              "inside: |Δ| ≤ 2 spreads", "", "| w | sampler | model | FID | Δ vs teacher | verdict |",
              "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        delta = "–" if "delta" not in r else f"{r['delta']:+.3f} ± {r['delta_std']:.3f}"
        lines.append(f"| {r['w']:g} | {r['sampler']} {r['steps']} | {r['model']} | {r['fid']:.3f} ± "
                     f"{r['fid_std']:.3f} | {delta} | {r.get('verdict', '')} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, required=True, help="the classifier-free-guided run")
    p.add_argument("--student", type=_labelled, action="append", required=True,
                   help="LABEL=PATH of a distilled run or checkpoint file (repeatable)")
    p.add_argument("--fit-student", type=_labelled, action="append", default=[],
                   help="LABEL=PATH of a stage-1 student measured in part 1 only (e.g. an earlier checkpoint)")
    p.add_argument("--w", type=_floats, default=[0.0, 2.0, 4.0])
    p.add_argument("--fit-w", type=_floats, default=[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
    p.add_argument("--samplers", type=_samplers, default=[("dpmpp_2m", 25), ("ddim", 32), ("ddim", 8)])
    p.add_argument("--n", type=int, default=2000, help="samples per (w, sampler, model), class-balanced")
    p.add_argument("--fit-n", type=int, default=1000, help="held-out rows of the fit by w")
    p.add_argument("--bootstrap", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--features", default=None, help="a feature network run (train-features), as cfgdiff eval")
    p.add_argument("--zero-x-at-noise-end", action="store_true",
                   help="add the teacher with x̂ = 0 where λ < -10 (what the first step from λ_min costs)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("reports/distillation_diagnosis.md"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    record = measure(args)
    here = str(Path.cwd().resolve()) + "/"  # reports name paths relative to the repository
    record["students"] = {label: text.replace(here, "") for label, text in record["students"].items()}
    record["seconds"] = time.perf_counter() - t0
    write_markdown(record, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
