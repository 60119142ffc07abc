"""Guidance sweeps: sample at each w, score FID and IS, and write the table, the plots and one grid per w.

``run_sweep`` is the loop behind ``cfgdiff eval``. For every guidance weight w (the paper's convention,
ε̃ = (1 + w) ε(z, c) - w ε(z) for classifier-free guidance, ε̃ = ε(z, c) - w σ ∇ log p_φ(c | z) for classifier
guidance) it draws ``n`` samples with class-balanced labels (label of sample i = i mod K) in chunks of
``batch_size`` rows, with the samplers and per-sample seeds of ``cfgdiff.generate.generate_samples`` (the same
samples as ``cfgdiff sample`` with that seed),
turns each chunk into features right away (memory does not grow with n beyond the D-dim features), and scores
them against the real data's reference statistics:

    FID = ||μ_g - μ_r||² + Tr(Σ_g + Σ_r - 2 (Σ_g Σ_r)^{1/2}),   IS = exp(E KL(p(y|x) || p(y)))

Every w starts from the same seed, so the rows share their initial noise (common random numbers): differences
between rows come from w, not from the draw. Network evaluations are counted, not assumed: ``nfe_per_sample``
is denoiser rows per sample (2 per guided classifier-free step, 1 per unguided step), and
``classifier_evals_per_sample`` counts classifier forward+backward passes (classifier guidance only).

This module prints nothing and parses nothing; the CLI owns both.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfgdiff.contract import CountingEpsFn, EpsFn
from cfgdiff.features import FeatureExtractor
from cfgdiff.generate import iter_samples
from cfgdiff.guidance import GuidanceWeight, LogProbFn, cfg, classifier_guidance
from cfgdiff.metrics import FeatureAccumulator, ReferenceStats, frechet_distance, inception_score, metric_names

GuideFn = Callable[[EpsFn, GuidanceWeight], EpsFn]


class CountingLogProbFn:
    """Wraps a classifier's log_prob_fn and counts the rows it is evaluated on (each is a forward + backward)."""

    def __init__(self, log_prob_fn: LogProbFn) -> None:
        self.log_prob_fn = log_prob_fn
        self.rows = 0

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.rows += z.shape[0]
        return self.log_prob_fn(z, logsnr, labels)


def classifier_guide(log_prob_fn: LogProbFn) -> GuideFn:
    """A ``guide`` for ``generate_samples``: classifier guidance ε - w σ ∇ log p(c | z) with this classifier."""

    def guide(eps_fn: EpsFn, w: GuidanceWeight) -> EpsFn:
        return classifier_guidance(eps_fn, log_prob_fn, w)

    return guide


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels i mod K for i < n: every chunk of K consecutive samples holds each class once."""
    return torch.arange(n, dtype=torch.long) % num_classes


@dataclass
class SweepRow:
    """One row of the table: the metrics at one w and how they were obtained."""

    w: float
    fid: float
    inception_score: float
    inception_score_std: float
    n: int
    steps: int
    sampler: str
    seed: int
    guidance: str
    nfe_per_sample: float  # denoiser network evaluations (rows) per sample
    classifier_evals_per_sample: float  # classifier forward+backward passes per sample
    seconds_per_sample: float  # sampling wall time per sample (feature extraction excluded)


@dataclass
class SweepResult:
    rows: list[SweepRow]
    grids: dict[float, np.ndarray]  # w -> [K, n_grid, C, H, W] (image data only)
    meta: dict[str, Any] = field(default_factory=dict)


def run_sweep(
    eps_fn: EpsFn,
    ws: Sequence[float],
    *,
    n: int,
    steps: int,
    extractor: FeatureExtractor,
    reference: ReferenceStats,
    sampler: str = "ancestral",
    seed: int = 0,
    batch_size: int = 256,
    guidance: str = "cfg",
    log_prob_fn: LogProbFn | None = None,
    grid_per_class: int = 8,
    device: torch.device | str = "cpu",
    on_chunk: Callable[[int], None] | None = None,
    weight_schedule: Callable[[float], GuidanceWeight] | None = None,
    **sampler_kwargs: Any,
) -> SweepResult:
    """FID and IS of ``n`` samples at each w (see the module docstring). ``guidance``: "cfg" or "classifier"
    (then ``log_prob_fn(z, logsnr, labels)`` -> log p_φ(labels | z_λ) is required). ``weight_schedule(w)``
    turns each row's w into the weight passed to the guidance (e.g. a guidance interval around w)."""
    if n < 2:
        raise ValueError(f"need n >= 2 samples for a covariance, got {n}")
    if guidance not in ("cfg", "classifier"):
        raise ValueError(f"unknown guidance {guidance!r}; choose cfg or classifier")
    if guidance == "classifier" and log_prob_fn is None:
        raise ValueError("classifier guidance needs a classifier (log_prob_fn)")
    num_classes = int(eps_fn.num_classes)
    labels = balanced_labels(n, num_classes)
    counting = CountingEpsFn(eps_fn)
    counting_cls = CountingLogProbFn(log_prob_fn) if log_prob_fn is not None else None
    guide = classifier_guide(counting_cls) if counting_cls is not None else cfg
    rows: list[SweepRow] = []
    grids: dict[float, np.ndarray] = {}
    for w in ws:
        counting.reset()
        if counting_cls is not None:
            counting_cls.rows = 0
        acc = FeatureAccumulator(extractor)
        per_class: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        seconds = 0.0
        offset = 0
        t_start = time.perf_counter()
        weight = weight_schedule(float(w)) if weight_schedule is not None else float(w)
        for x in iter_samples(counting, labels, w=weight, steps=steps, sampler=sampler, seed=seed,
                               batch_size=batch_size, guide=guide, device=device, **sampler_kwargs):
            seconds += time.perf_counter() - t_start
            acc.add(x)
            for i, c in enumerate(labels[offset:offset + x.shape[0]].tolist()):
                if len(per_class[c]) < grid_per_class:
                    per_class[c].append(x[i].numpy())
            offset += x.shape[0]
            if on_chunk is not None:
                on_chunk(x.shape[0])
            t_start = time.perf_counter()
        feats = acc.result()
        mu, cov = feats.statistics()
        fid = frechet_distance(mu, cov, reference.mu, reference.cov)
        is_mean, is_std = inception_score(feats.probs)
        rows.append(SweepRow(
            w=float(w), fid=fid, inception_score=is_mean, inception_score_std=is_std, n=n, steps=steps,
            sampler=sampler, seed=seed, guidance=guidance, nfe_per_sample=counting.rows / n,
            classifier_evals_per_sample=(counting_cls.rows / n) if counting_cls is not None else 0.0,
            seconds_per_sample=seconds / n,
        ))
        filled = min(len(v) for v in per_class)
        if filled > 0:
            grids[float(w)] = np.stack([np.stack(v[:filled]) for v in per_class])  # [K, n_grid, C, H, W]
    fid_name, is_name = metric_names(extractor.name)
    meta = {"fid_name": fid_name, "is_name": is_name, "feature_network": extractor.cache_key,
            "reference_count": reference.count, "reference_is": reference.inception_score}
    return SweepResult(rows, grids, meta)


# -- writing ---------------------------------------------------------------------------------------------


def _fmt_w(w: float) -> str:
    return f"{w:g}"


def markdown_table(result: SweepResult) -> str:
    """The sweep as a Markdown table, with the metric names spelled out."""
    fid_name, is_name = result.meta["fid_name"], result.meta["is_name"]
    head = (f"| w | {fid_name} | {is_name} | n | steps | sampler | seed | guidance | NFE / sample | "
            "classifier fwd+bwd / sample | s / sample |")
    lines = [head, "|" + "---|" * 11]
    best = min(r.fid for r in result.rows)
    for r in result.rows:
        fid = f"**{r.fid:.3f}**" if r.fid == best else f"{r.fid:.3f}"
        lines.append(f"| {_fmt_w(r.w)} | {fid} | {r.inception_score:.3f} ± {r.inception_score_std:.3f} | {r.n} | "
                     f"{r.steps} | {r.sampler} | {r.seed} | {r.guidance} | {r.nfe_per_sample:g} | "
                     f"{r.classifier_evals_per_sample:g} | {r.seconds_per_sample:.4f} |")
    return "\n".join(lines) + "\n"


def write_sweep(result: SweepResult, out_dir: str | os.PathLike, *, title: str,
                class_names: Sequence[str] | None = None, header_lines: Sequence[str] = ()) -> dict[str, Path]:
    """Write results.csv/.md/.json, tradeoff.png, metrics_vs_w.png, grids/w_{w}.png and grids_all.png (all w)."""
    from cfgdiff.plotting import metrics_vs_w_plot, save_sample_grid, tradeoff_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    fid_name, is_name = result.meta["fid_name"], result.meta["is_name"]
    floor = result.meta.get("fid_floor")

    paths["csv"] = out / "results.csv"
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(result.rows[0])))
        writer.writeheader()
        for r in result.rows:
            writer.writerow(asdict(r))

    paths["md"] = out / "results.md"
    lines = [f"# {title}", "", *header_lines]
    if floor is not None:
        lines.append(f"- floor: {fid_name} between the digits test split and the training split = {floor:.3f} "
                     f"(the test split's {result.meta.get('floor_count', '?')} images against the training split)")
    lines.append(f"- real data: {is_name} of the {result.meta['reference_count']} reference images = "
                 f"{result.meta['reference_is']:.3f}; FID is measured against their statistics")
    lines += ["", markdown_table(result)]
    paths["md"].write_text("\n".join(lines))
    paths["json"] = out / "results.json"
    paths["json"].write_text(json.dumps({"title": title, "meta": result.meta,
                                         "rows": [asdict(r) for r in result.rows]}, indent=2) + "\n")

    curve = {title: ([r.w for r in result.rows], [r.fid for r in result.rows],
                     [r.inception_score for r in result.rows])}
    paths["tradeoff"] = out / "tradeoff.png"
    tradeoff_plot(curve, paths["tradeoff"], fid_label=fid_name, is_label=is_name, fid_floor=floor)
    paths["vs_w"] = out / "metrics_vs_w.png"
    metrics_vs_w_plot(curve, paths["vs_w"], fid_label=fid_name, is_label=is_name, fid_floor=floor)
    if result.grids:
        paths["grids_all"] = out / "grids_all.png"
        save_sample_grid(result.grids, paths["grids_all"], class_names=class_names,
                         title=f"{title}: {result.rows[0].steps} steps, one panel per w")
    for w, grid in result.grids.items():
        name = f"w_{_fmt_w(w)}.png"
        paths[f"grid_{_fmt_w(w)}"] = out / "grids" / name
        save_sample_grid({w: grid}, out / "grids" / name, class_names=class_names,
                         title=f"{result.rows[0].guidance} guidance, {result.rows[0].steps} steps")
    return paths


def load_sweep(path: str | os.PathLike) -> tuple[str, dict[str, Any], list[SweepRow]]:
    """Read back a ``results.json``: (title, meta, rows)."""
    data = json.loads(Path(path).read_text())
    return data["title"], data["meta"], [SweepRow(**r) for r in data["rows"]]


def best_row(rows: Sequence[SweepRow]) -> SweepRow:
    """The row with the lowest FID."""
    return min(rows, key=lambda r: r.fid if math.isfinite(r.fid) else float("inf"))
