"""Guidance sweeps: sample at each w, score the samples, and write the table, the plots and one grid per w.

``run_sweep`` is the loop behind ``cfgdiff eval``. For every guidance weight w (the paper's convention,
ε̃ = (1 + w) ε(z, c) - w ε(z) for classifier-free guidance, ε̃ = ε(z, c) - w σ ∇ log p_φ(c | z) for classifier
guidance) it draws ``n`` samples with class-balanced labels (label of sample i = i mod K) through one guided run
(``cfgdiff.sampling.pipeline.GuidedRun``: chunks of ``batch_size`` rows, per-sample seeds, the same samples as
``cfgdiff sample`` with that seed), hands each chunk to a *scorer* right away (``cfgdiff.evaluation.metrics.scorers``;
memory does not grow with n beyond the D-dim features), and scores the set against the real data.
Images (``ImageScorer``):

    FID = ||μ_g - μ_r||² + Tr(Σ_g + Σ_r - 2 (Σ_g Σ_r)^{1/2}),   IS = exp(E KL(p(y|x) || p(y)))

against the training split (``fid``) and the held-out test split (``fid_test``), each ± its bootstrap spread
(``fid_std``, ``fid_test_std``), IS ± std over 10 splits, and ``memorised``, the share of near-copies of
training images; the floors at the same N are in ``meta``. Fidelity and diversity apart: ``precision`` /
``recall`` (k-NN manifolds, Kynkäänniemi et al. 2019), ``density`` / ``coverage`` (Naeem et al. 2020), ``kid``
(Bińkowski et al. 2018) against the training split's pool, and ``fid_per_class`` (the class-averaged FID).
2-D points (``VectorScorer``): the sliced Wasserstein distance to held-out points, the exact guided log-density,
and precision/recall/density/coverage against held-out points. Fields a kind of data does not have are None.

``labels`` replaces the class-balanced labels where a method reads none: a composition of conditions
(``guidance="compose"``) gets the null label K for every sample (the grid is then one row), and is scored by a
scorer whose references are the real images of its positive-weight classes (``ReferenceStats.of_classes``) and
which reports each term's class probability (``term_prob``; ``ImageScorer(..., terms=...)``).

Every w starts from the same seed, so the rows share their initial noise (common random numbers): differences
between rows come from w, not from the draw. Network evaluations are counted, not assumed: ``nfe_per_sample``
is denoiser rows per sample (2 per guided classifier-free step, 1 per unguided step), and
``classifier_evals_per_sample`` counts classifier forward+backward passes (classifier guidance only).

Under torchrun (``dist``), the ranks split the chunks of every w and rank 0 scores the gathered samples, once:
the result is the one-process result (``cfgdiff.sampling.sharded``); the other ranks get an empty result.

This module prints nothing and parses nothing; the CLI owns both.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfgdiff.core.contract import EpsFn
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.evaluation.features import FeatureExtractor
from cfgdiff.evaluation.metrics import ImageScorer, ReferenceStats, SampleScorer
from cfgdiff.evaluation.metrics.reference import class_words
from cfgdiff.guidance import GuidanceWeight, LogProbFn
from cfgdiff.runtime.distributed import DistContext
from cfgdiff.sampling.pipeline import GuidedRun
from cfgdiff.sampling.sharded import sum_over_ranks


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels i mod K for i < n: every chunk of K consecutive samples holds each class once."""
    return torch.arange(n, dtype=torch.long) % num_classes


@dataclass
class SweepRow:
    """One row of the table: the metrics at one w and how they were obtained."""

    w: float
    fid: float | None  # FID against the training split's statistics (None for vector data)
    inception_score: float | None
    inception_score_std: float | None  # std over the 10 splits of the IS
    n: int
    steps: int
    sampler: str
    seed: int
    guidance: str
    nfe_per_sample: float  # denoiser network evaluations (rows) per sample
    classifier_evals_per_sample: float  # classifier forward+backward passes per sample
    seconds_per_sample: float  # sampling wall time per sample (feature extraction excluded)
    # fields added with the held-out evaluation (None where not measured; old results.json rows lack them)
    fid_std: float | None = None  # bootstrap std of ``fid`` over resamples of the n samples (B in meta)
    fid_test: float | None = None  # FID against the held-out test split's statistics
    fid_test_std: float | None = None  # bootstrap std of ``fid_test``
    fid_delta: float | None = None  # fid - fid of the sweep's first row (None on that row)
    fid_delta_std: float | None = None  # paired bootstrap std of ``fid_delta``: is the difference beyond noise?
    memorised: float | None = None  # share of samples that are near-copies of a training image (0..1)
    sliced_wasserstein: float | None = None  # vector data: SW_2 to held-out points, both class-balanced
    sliced_wasserstein_std: float | None = None  # bootstrap std of ``sliced_wasserstein``
    sliced_wasserstein_per_class: list[float | None] | None = None  # SW_2 per class
    log_density: float | None = None  # 2-D testbed: mean log p̃_w(x | c) under the exact guided target
    log_density_std: float | None = None  # its standard error
    log_density_target: float | None = None  # -H(p̃_w): what a perfect sampler of p̃_w scores
    # fidelity and diversity apart (cfgdiff.evaluation.metrics.fidelity_diversity; k and the real set in meta)
    precision: float | None = None  # share of samples inside the real k-NN manifold (fidelity)
    precision_std: float | None = None  # its standard error given the real set (binomial)
    recall: float | None = None  # share of real points inside the samples' k-NN manifold (diversity)
    recall_std: float | None = None  # its standard error given the samples (binomial)
    density: float | None = None  # mean count of real k-NN balls holding a sample, / k (1 for i.i.d. sets)
    density_std: float | None = None  # its standard error given the real set
    coverage: float | None = None  # share of real points whose k-NN ball holds a sample
    coverage_std: float | None = None  # its standard error given the samples (binomial)
    kid: float | None = None  # KID: unbiased MMD² (cubic kernel), mean over subsets (images)
    kid_std: float | None = None  # its std over the subsets
    fid_per_class: float | None = None  # FID of class c's samples vs class c's training images, mean over c
    # a composition of conditions (cfgdiff.evaluation.metrics.adherence): "CLASS:WEIGHT" -> mean p(c_i | x)
    term_prob: dict[str, float] | None = None
    term_prob_std: dict[str, float | None] | None = None  # its standard error over the samples


@dataclass
class SweepResult:
    rows: list[SweepRow]
    grids: dict[float, np.ndarray]  # w -> [K, n_grid, C, H, W] (image data only)
    meta: dict[str, Any] = field(default_factory=dict)
    points: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # vector data: w -> (x, labels)


def guided_run(
    eps_fn: EpsFn,
    *,
    steps: int,
    sampler: str = "ancestral",
    batch_size: int = 256,
    guidance: str = "cfg",
    log_prob_fn: LogProbFn | None = None,
    guidance_params: Mapping[str, Any] | None = None,
    weight_schedule: Callable[[float], GuidanceWeight] | None = None,
    **kwargs: Any,
) -> GuidedRun:
    """The ``GuidedRun`` of a ``run_sweep`` call in its keyword form: ``guidance`` and ``guidance_params`` name the
    method, ``log_prob_fn`` is classifier guidance's classifier (also accepted inside the params),
    ``weight_schedule(w)`` the weight used for each row's w (e.g. a guidance interval around w); ``kwargs`` are
    GuidedRun's network and chunk options and, for the rest, the sampler's keyword arguments."""
    params = dict(guidance_params or {})
    if log_prob_fn is not None:
        params["log_prob_fn"] = log_prob_fn
    return GuidedRun.from_options(eps_fn, method=guidance, params=params, schedule=weight_schedule, sampler=sampler,
                                  steps=steps, batch_size=batch_size, **kwargs)


@dataclass
class ScoredPoint:
    """One w of a guided run, scored: its table row, its grid of images ([K, n_grid, C, H, W], images only) and
    its points (vector data: (x, labels))."""

    row: SweepRow
    grid: np.ndarray | None = None
    points: tuple[np.ndarray, np.ndarray] | None = None


def score_at(run: GuidedRun, w: float, *, n: int, scorer: SampleScorer | None, seed: int = 0,
             grid_per_class: int = 0, on_chunk: Callable[[int], None] | None = None,
             dist: DistContext | None = None, labels: torch.Tensor | None = None) -> ScoredPoint | None:
    """``n`` class-balanced samples of ``run`` at w (or ``n`` samples of the given ``labels``), scored as they stream
    in (one row of ``run_sweep``; also one trial of ``cfgdiff tune``). Counts the run's network rows afresh. Under
    torchrun every rank samples and rank 0 scores; the other ranks get None. The grid has one row per class of
    the balanced labels, or per distinct value of the given ones."""
    main = dist is None or dist.is_main
    if labels is None:
        labels, grid_rows = balanced_labels(n, run.num_classes), list(range(run.num_classes))
    else:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (n,):
            raise ValueError(f"labels must hold the n = {n} samples' labels, got shape {tuple(labels.shape)}")
        grid_rows = sorted(set(labels.tolist()))
    run.counter.reset()
    acc = scorer.new_set() if main and scorer is not None else None
    per_class: dict[int, list[np.ndarray]] = {c: [] for c in grid_rows}
    seconds = 0.0
    offset = 0
    t_start = time.perf_counter()
    for x in run.iter_samples(labels, float(w), seed=seed, dist=dist):  # other ranks: nothing (sent to rank 0)
        seconds += time.perf_counter() - t_start
        chunk_labels = labels[offset:offset + x.shape[0]]
        if acc is not None:
            acc.add(x, chunk_labels)
        for i, c in enumerate(chunk_labels.tolist()):
            if x.ndim == 4 and len(per_class[c]) < grid_per_class:  # grids of images only
                per_class[c].append(x[i].numpy())
        offset += x.shape[0]
        if on_chunk is not None:
            on_chunk(x.shape[0])
        t_start = time.perf_counter()
    denoiser_rows = sum_over_ranks(run.denoiser_rows(), dist)
    classifier_rows = sum_over_ranks(run.classifier_rows(), dist)
    if acc is None:
        return None
    row = SweepRow(
        w=float(w), **acc.finish(float(w)), n=n, steps=run.steps, sampler=run.sampler, seed=seed,
        guidance=run.method, nfe_per_sample=denoiser_rows / n,
        classifier_evals_per_sample=(classifier_rows / n) if run.uses_classifier else 0.0,
        seconds_per_sample=seconds / n,
    )
    filled = min(len(v) for v in per_class.values())
    grid = np.stack([np.stack(per_class[c][:filled]) for c in grid_rows]) if filled > 0 else None
    return ScoredPoint(row, grid, getattr(acc, "points", None))


def run_sweep(
    model: GuidedRun | EpsFn,
    ws: Sequence[float],
    *,
    n: int,
    extractor: FeatureExtractor | None = None,
    reference: ReferenceStats | None = None,
    scorer: SampleScorer | None = None,
    seed: int = 0,
    grid_per_class: int = 8,
    on_chunk: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
    labels: torch.Tensor | None = None,
    **run_kwargs: Any,
) -> SweepResult:
    """The metrics of ``n`` samples at each w (see the module docstring), drawn by the guided run ``model``
    (``cfgdiff.sampling.pipeline.GuidedRun``: the model, guidance method, interval, sampler, steps, precision).
    An eps_fn with ``guided_run``'s keyword arguments (``steps``, ``sampler``, ``guidance``, ``guidance_params``,
    ``log_prob_fn``, ``weight_schedule``, sampler options) is turned into one first.

    ``scorer`` measures the samples (default: ``ImageScorer(extractor, reference)``, FID against ``reference`` and
    IS). ``labels``: the n samples' labels instead of the class-balanced i mod K (the null label K for a composition,
    whose method reads none). ``nfe_per_sample`` counts every denoiser row the run evaluates (autoguidance's guide
    network too),
    ``classifier_evals_per_sample`` the classifier's forward + backward passes. ``dist``: this process's place in a
    torchrun group; the ranks split the samples, rank 0 scores all of them and returns the one-process result, the
    other ranks return an empty ``SweepResult`` (no rows) and need no scorer."""
    run = model if isinstance(model, GuidedRun) else guided_run(model, **run_kwargs)
    if isinstance(model, GuidedRun) and run_kwargs:
        raise ValueError(f"a GuidedRun carries its own options; got {', '.join(sorted(run_kwargs))} as well")
    if n < 2:
        raise ValueError(f"need n >= 2 samples for a covariance, got {n}")
    main = dist is None or dist.is_main  # the process that scores (every process when not distributed)
    if scorer is None and main:
        if extractor is None or reference is None:
            raise ValueError("run_sweep needs a scorer, or a feature extractor and reference statistics")
        scorer = ImageScorer(extractor, reference)
    rows: list[SweepRow] = []
    grids: dict[float, np.ndarray] = {}
    points: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    for w in ws:
        point = score_at(run, float(w), n=n, scorer=scorer, seed=seed, grid_per_class=grid_per_class,
                         on_chunk=on_chunk, dist=dist, labels=labels)
        if point is None:  # not the scoring rank
            continue
        rows.append(point.row)
        if point.grid is not None:
            grids[float(w)] = point.grid
        if point.points is not None:
            points[float(w)] = point.points
    return SweepResult(rows, grids, {**scorer.meta(n), **run.record()} if main else {}, points)


# -- writing ---------------------------------------------------------------------------------------------


def _fmt_w(w: float) -> str:
    return f"{w:g}"


def _pm(value: float | None, std: float | None, digits: int = 3) -> str:
    """"value ± std" (or "value", or "–" when not measured)."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and math.isfinite(std) else "")


def _percent(share: float | None) -> str:
    return "–" if share is None else f"{100.0 * share:.1f} %"


def _sweep_kind(result: SweepResult) -> str:
    return str(result.meta.get("kind", "images"))


def markdown_table(result: SweepResult) -> str:
    """The sweep as a Markdown table, with the metric names, the sample count N and the references spelled out,
    each metric ± its spread, and a last row "real (floor)": real data of the same N scored the same way."""
    meta, rows = result.meta, result.rows
    n = rows[0].n
    tail_head = "n | steps | sampler | seed | guidance | NFE / sample | classifier fwd+bwd / sample | s / sample |"

    def tail(r: SweepRow) -> str:
        return (f"{r.n} | {r.steps} | {r.sampler} | {r.seed} | {r.guidance} | {r.nfe_per_sample:g} | "
                f"{r.classifier_evals_per_sample:g} | {r.seconds_per_sample:.4f} |")

    prdc_head = (f"precision (k = {meta.get('prdc_k')}) | recall (k = {meta.get('prdc_k')}) | density "
                 f"(k = {meta.get('density_k')}) | coverage (k = {meta.get('density_k')}) | ")

    def prdc_cells(r: SweepRow) -> str:
        return (f"{_pm(r.precision, r.precision_std)} | {_pm(r.recall, r.recall_std)} | "
                f"{_pm(r.density, r.density_std)} | {_pm(r.coverage, r.coverage_std)} | ")

    if _sweep_kind(result) == "vectors":
        k = len(rows[0].sliced_wasserstein_per_class or [])
        head = (f"| w | SW_2 to held-out, N = {n} | SW_2 per class | mean log p̃_w(x\\|c) | -H(p̃_w) (exact "
                f"sampler) | {prdc_head}{tail_head}")
        lines = [head, "|" + "---|" * 17]
        best = min(r.sliced_wasserstein for r in rows)
        for r in rows:
            sw = _pm(r.sliced_wasserstein, r.sliced_wasserstein_std)
            per_class = " / ".join("–" if v is None else f"{v:.3f}" for v in (r.sliced_wasserstein_per_class or []))
            lines.append(f"| {_fmt_w(r.w)} | {f'**{sw}**' if r.sliced_wasserstein == best else sw} | {per_class} | "
                         f"{_pm(r.log_density, r.log_density_std)} | {_pm(r.log_density_target, None)} | "
                         f"{prdc_cells(r)}{tail(r)}")
        if meta.get("sw_floor") is not None:
            floors = " / ".join(f"{v:.3f}" for v in meta.get("sw_floor_per_class", [])[:k])
            lines.append(f"| real (floor) | {_pm(meta['sw_floor'], meta.get('sw_floor_std'))} | {floors} | – | – | "
                         f"– | – | – | – | {n} | | | | | | | |")
        return "\n".join(lines) + "\n"

    fid_name, is_name = meta["fid_name"], meta["is_name"]
    base = meta.get("fid_delta_baseline_w")
    delta_head = f"Δ vs w = {_fmt_w(base)} (paired)" if base is not None else "Δ (paired)"
    terms = any(r.term_prob is not None for r in rows)  # a composition scored by a classifier of the data's classes
    head = (f"| w | {fid_name}, N = {n} vs training split | {delta_head} | {fid_name}, N = {n} vs test split | "
            f"{is_name} | near-copies of training images | {prdc_head}KID | {fid_name} per class (mean) | "
            + ("p(c_i \\| x) per term | " if terms else "") + tail_head)
    lines = [head, "|" + "---|" * (21 if terms else 20)]
    best = min(r.fid for r in rows)
    for r in rows:
        fid = _pm(r.fid, r.fid_std)
        fid = f"**{fid}**" if r.fid == best else fid
        delta = "–" if r.fid_delta is None else f"{r.fid_delta:+.3f}" + (
            f" ± {r.fid_delta_std:.3f}" if r.fid_delta_std is not None else "")
        term_cell = f"{term_probabilities_text(r)} | " if terms else ""
        lines.append(f"| {_fmt_w(r.w)} | {fid} | {delta} | {_pm(r.fid_test, r.fid_test_std)} | "
                     f"{_pm(r.inception_score, r.inception_score_std)} | {_percent(r.memorised)} | {prdc_cells(r)}"
                     f"{_pm(r.kid, r.kid_std, 5)} | {_pm(r.fid_per_class, None)} | {term_cell}{tail(r)}")
    if meta.get("fid_floor") is not None:
        copies = _percent(meta.get("memorisation_test_share"))
        at_least = "≥ " if meta.get("fid_floor_method") == "lower bound" else ""
        lines.append(f"| real (floor) | {at_least}{_pm(meta['fid_floor'], meta.get('fid_floor_std'))} | – | "
                     f"{_pm(meta.get('fid_test_floor'), meta.get('fid_test_floor_std'))} | "
                     f"{_pm(meta.get('test_is'), None)} | {copies} | – | – | – | – | – | – | "
                     + ("– | " if terms else "") + f"{n} | | | | | | | |")
    return "\n".join(lines) + "\n"


def term_probabilities_text(row: SweepRow) -> str:
    """"3:+1 0.931 ± 0.012, 8:-1 0.020 ± 0.004": each term's mean p(c_i | x) and its standard error ("–" if none)."""
    if row.term_prob is None:
        return "–"
    errors = row.term_prob_std or {}
    return ", ".join(f"{key} {_pm(value, errors.get(key))}" for key, value in row.term_prob.items())


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _of_classes(meta: Mapping[str, Any]) -> str:
    """" of classes 3, 8" when the references are some classes' real images (a composition), else ""."""
    classes = meta.get("reference_classes")
    return f" of {class_words(classes)}" if classes else ""


def _header_notes(result: SweepResult) -> list[str]:
    """The lines under the title that say what the table's metrics are measured against."""
    meta, n = result.meta, result.rows[0].n
    if _sweep_kind(result) == "vectors":
        lines = [f"- SW_2: sliced Wasserstein distance (p = 2, {meta.get('sw_projections')} seeded directions) of the "
                 f"{n} samples to the {meta.get('held_out_count')} held-out points, both class-balanced; ± is the "
                 f"bootstrap std over {meta.get('sw_bootstrap')} resamples of the samples"]
        if meta.get("sw_floor") is not None:
            lines.append(f"- floor: {meta['sw_floor_definition']}: "
                         f"SW_2 = {_pm(meta['sw_floor'], meta.get('sw_floor_std'))}")
        if meta.get("log_density_name"):
            lines.append("- mean log p̃_w(x|c): the samples' mean log-density under the exact guided target "
                         "p(x|c) p(c|x)^w / Z_c(w) (normalised on a grid), ± its standard error; an exact sampler of "
                         "p̃_w scores -H(p̃_w); higher is not better beyond that (samples piled on the modes score "
                         "above it)")
        return lines + _prdc_notes(meta, n)
    fid_name, is_name = meta["fid_name"], meta["is_name"]
    of = _of_classes(meta)
    lines = [f"- {fid_name} of the N = {n} samples against the statistics of the {meta['reference_count']} training "
             f"images{of} and of the {meta.get('test_count', '?')} held-out test images{of}; ± is the bootstrap std "
             f"over {meta.get('fid_bootstrap')} resamples of the samples (the spread of FID over redraws of N "
             "samples); Δ is the difference to the first row, ± its paired bootstrap std (both rows resampled alike: "
             "sample i starts from the same noise at every w), so |Δ| above about 2 of its std is beyond noise"]
    if meta.get("fid_floor") is not None:
        at_least = "≥ " if meta.get("fid_floor_method") == "lower bound" else ""
        lines.append(f"- floor vs training split: {meta['fid_floor_definition']} = "
                     f"{at_least}{_pm(meta['fid_floor'], meta.get('fid_floor_std'))}")
    if meta.get("fid_test_floor") is not None:
        lines.append(f"- floor vs test split: {meta['fid_test_floor_definition']} = "
                     f"{_pm(meta['fid_test_floor'], meta.get('fid_test_floor_std'))}")
    if meta.get("fid_floor_whole_test") is not None:
        whole = ("the whole test split" if not of else f"all test images{of}")
        lines.append(f"- for reference, {whole} ({meta['fid_floor_whole_test_count']} images) against the training "
                     f"split{of}: {meta['fid_floor_whole_test']:.3f} (not at N = {n}: do not compare)")
    if meta.get("memorisation_threshold") is not None:
        lines.append(f"- near-copies: samples whose nearest training image (L2 in pixels, x in [-1, 1]) is closer "
                     f"than {meta['memorisation_threshold']:.4g}, the distance that 99 % of the "
                     f"{meta['memorisation_test_count']} held-out test images exceed "
                     f"({_percent(meta['memorisation_test_share'])} of them are below it)")
    lines += _prdc_notes(meta, n)
    if meta.get("kid_subsets") is not None:
        lines.append(f"- KID: unbiased MMD² with the kernel (x·y/d + 1)³ between {meta['kid_subset_size']} samples "
                     f"and {meta['kid_subset_size']} real features ({meta['kid_real']}), mean ± std over "
                     f"{meta['kid_subsets']} seeded random subsets (Bińkowski et al. 2018; torch-fidelity's subsets)")
    if meta.get("fid_per_class_classes") is not None:
        lines.append(f"- {fid_name} per class: FID of the samples of class c against the training images of class c, "
                     f"averaged over the {meta['fid_per_class_classes']} classes (about N / K samples each, so "
                     "biased upward more than the overall FID)")
    if meta.get("reference") is not None:
        lines.append(f"- reference: {meta['reference']}; every distance above is to it (training and test split "
                     "alike), and the floors are real images of the same classes")
    if meta.get("term_prob_name") is not None:
        lines.append(f"- p(c_i | x) per term: {meta['term_prob_name']}; a term of positive weight should be high, one "
                     "of negative weight low")
    elif meta.get("compose") is not None:
        lines.append("- p(c_i | x) per term: not measured (the feature network does not classify this data's "
                     "classes)")
    reference_is, test_is = meta.get("reference_is"), meta.get("test_is")
    if reference_is is not None and math.isfinite(reference_is):
        lines.append(f"- real data: {is_name} of the training images = {reference_is:.3f}"
                     + (f", of the test images = {test_is:.3f}" if test_is is not None and math.isfinite(test_is)
                        else ""))
    return lines


def _prdc_notes(meta: Mapping[str, Any], n: int) -> list[str]:
    if meta.get("prdc_k") is None:
        return []
    return [f"- precision / recall (k-NN manifolds with k = {meta['prdc_k']}, Kynkäänniemi et al. 2019) and density "
            f"/ coverage (k = {meta['density_k']}, Naeem et al. 2020) of the {n} samples against "
            f"{meta['prdc_real']}; precision and density measure fidelity, recall and coverage diversity; ± is the "
            "standard error given the other set (the k-NN balls held fixed)"]


def write_sweep(result: SweepResult, out_dir: str | os.PathLike, *, title: str,
                class_names: Sequence[str] | None = None, header_lines: Sequence[str] = (),
                mixture: GaussianMixture | None = None) -> dict[str, Path]:
    """Write results.csv/.md/.json, tradeoff.png, metrics_vs_w.png, grids/w_{w}.png, grids_all.png (all w) and
    report.html (``cfgdiff.evaluation.report``: all of it on one self-contained page). Vector data: no grids; with the
    exact ``mixture``, samples.png (exact guided densities above the samples, one column per w)."""
    from cfgdiff.evaluation.plotting import metrics_vs_w_plot, save_sample_grid, tradeoff_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    vectors = _sweep_kind(result) == "vectors"

    paths["csv"] = out / "results.csv"
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(result.rows[0])))
        writer.writeheader()
        for r in result.rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in asdict(r).items()})

    paths["md"] = out / "results.md"
    lines = [f"# {title}", "", *header_lines, *_header_notes(result), "", markdown_table(result)]
    paths["md"].write_text("\n".join(lines))
    paths["json"] = out / "results.json"
    paths["json"].write_text(json.dumps(_finite_or_none({"title": title, "meta": result.meta,
                                                         "rows": [asdict(r) for r in result.rows]}),
                                        indent=2) + "\n")

    def nan_if_none(values: Sequence[float | None]) -> list[float]:
        return [math.nan if v is None else float(v) for v in values]

    ws = [r.w for r in result.rows]
    if vectors:
        fid_name, is_name = "SW_2 to held-out points", "mean log p̃_w(x|c)"
        floor = result.meta.get("sw_floor")
        curve = {title: (ws, nan_if_none([r.sliced_wasserstein for r in result.rows]),
                         nan_if_none([r.log_density for r in result.rows]))}
    else:
        fid_name = f"{result.meta['fid_name']}\nN = {result.rows[0].n} vs training split"
        is_name = result.meta["is_name"]
        floor = result.meta.get("fid_floor")
        curve = {title: (ws, nan_if_none([r.fid for r in result.rows]),
                         nan_if_none([r.inception_score for r in result.rows]))}
    paths["tradeoff"] = out / "tradeoff.png"
    tradeoff_plot(curve, paths["tradeoff"], fid_label=fid_name, is_label=is_name, fid_floor=floor)
    paths["vs_w"] = out / "metrics_vs_w.png"
    metrics_vs_w_plot(curve, paths["vs_w"], fid_label=fid_name, is_label=is_name, fid_floor=floor)
    if result.points and mixture is not None:
        from cfgdiff.evaluation.plotting import toy_guidance_figure

        paths["samples"] = out / "samples.png"
        toy_guidance_figure(mixture, ws, result.points, paths["samples"])
    if result.grids:
        paths["grids_all"] = out / "grids_all.png"
        save_sample_grid(result.grids, paths["grids_all"], class_names=class_names,
                         title=f"{title}: {result.rows[0].steps} steps, one panel per w")
    for w, grid in result.grids.items():
        name = f"w_{_fmt_w(w)}.png"
        paths[f"grid_{_fmt_w(w)}"] = out / "grids" / name
        save_sample_grid({w: grid}, out / "grids" / name, class_names=class_names,
                         title=f"{result.rows[0].guidance} guidance, {result.rows[0].steps} steps")
    from cfgdiff.evaluation.report import REPORT_FILE, write_report  # the page reads back what was just written

    paths["report"] = write_report([out], out / REPORT_FILE)
    return paths


def load_sweep(path: str | os.PathLike) -> tuple[str, dict[str, Any], list[SweepRow]]:
    """Read back a ``results.json``: (title, meta, rows)."""
    data = json.loads(Path(path).read_text())
    return data["title"], data["meta"], [SweepRow(**r) for r in data["rows"]]


def best_row(rows: Sequence[SweepRow]) -> SweepRow:
    """The row with the lowest FID (vector data: the lowest sliced Wasserstein distance)."""

    def key(r: SweepRow) -> float:
        value = r.fid if r.fid is not None else r.sliced_wasserstein
        return value if value is not None and math.isfinite(value) else float("inf")

    return min(rows, key=key)
