"""``cfgdiff tune``: search a guidance method's settings for an objective, with Optuna (``cfgdiff.tuning``).

    cfgdiff tune RUN_DIR --guidance apg --objective fid --trials 30 --n-min 125 --n-max 500 --final-n 2000

searches w and the method's own parameters (and, asked, the guidance interval and the sampler's steps), scores
each trial with eval's metrics, cheap trials first (successive halving with N as the resource), re-scores the
chosen setting on fresh seeds, and writes into --out: trials.{csv,md}, front.png, summary.json, report.html, the
re-scored setting's sweep (final/: eval's results and report.html), and best.toml, which ``cfgdiff sample RUN_DIR
--config best.toml`` and ``cfgdiff eval --config best.toml`` take as they are. The study lives in --storage (a
SQLite file in --out by default): run the same command again to resume a killed tune, or start it in several
processes (or machines, on a PostgreSQL/MySQL URL) to share its budget.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import time
from typing import Any

from cfgdiff.cli.arguments import (
    UsageError,
    check_fits_in_memory,
    check_writable,
    device,
    output_path,
    positive_int,
    progress,
)
from cfgdiff.cli.config_file import to_toml, toml_value
from cfgdiff.cli.guidance_options import METHOD_FLAGS, add_guidance_options, guidance_from_args, method_flag_params
from cfgdiff.cli.model_source import add_model_source_options, load_model_source
from cfgdiff.cli.network_options import add_network_options, network_options
from cfgdiff.cli.sampling_options import add_sampler_options, guided_run_from_args, interval_of
from cfgdiff.cli.scoring_options import add_scoring_options, check_scoring_options, scorer_for

EXIT_OK = 0
BEST_FILE = "best.toml"


def _int_pair(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        low, high = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two integers), got {text!r}") from None
    if not 1 <= low < high:
        raise argparse.ArgumentTypeError(f"expected 1 <= LOW < HIGH, got {text!r}")
    return low, high


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="search a guidance method's settings for an objective (Optuna)",
                       description="Search w, the guidance method's own parameters (and, asked, the guidance "
                                   "interval and the sampler's steps) for an objective: FID, KID, precision at a "
                                   "recall floor, or a two-objective front; cheap trials first, the chosen setting "
                                   "re-scored on fresh seeds; writes the trial table, the front plot, report.html "
                                   "and best.toml (for sample/eval --config).")
    add_model_source_options(p, data_option=True)
    g = p.add_argument_group("what to optimise")
    g.add_argument("--objective", default=None,
                   help="fid, kid, fid_per_class or sw (minimised; sw: 2-D data), precision@recall=R (precision "
                        "with recall >= R), or pareto:A,B (e.g. pareto:precision,recall, pareto:fid,nfe) "
                        "(default fid)")
    g.add_argument("--search", default=None, metavar="NAME=LOW:HIGH,...",
                   help="search ranges replacing the defaults, e.g. w=0:2,eta=0:1 (names: w, the method's "
                        "parameters, sigma_lo/sigma_hi with --tune-interval, steps with --tune-steps)")
    g.add_argument("--tune-interval", action="store_true",
                   help="also search the guidance interval (sigma_lo in [0.02, 2], sigma_hi in [2, 80], log)")
    g.add_argument("--tune-steps", type=_int_pair, default=None, metavar="LOW,HIGH",
                   help="also search the sampler's steps in [LOW, HIGH]")
    b = p.add_argument_group("budget")
    b.add_argument("--trials", type=int, default=20,
                   help="finished trials in the study, all processes together (default 20)")
    b.add_argument("--n-min", type=positive_int("--n-min"), default=100,
                   help="samples of a trial's first rung (default 100)")
    b.add_argument("--n-max", type=positive_int("--n-max"), default=400,
                   help="samples of a trial's last rung; every trial of a two-objective study (default 400)")
    b.add_argument("--reduction", type=int, default=2,
                   help="N grows by this factor per rung, and each rung keeps its best 1/REDUCTION (default 2)")
    b.add_argument("--final-n", type=positive_int("--final-n"), default=1000,
                   help="samples of the re-scoring of the chosen setting on fresh seeds (default 1000)")
    b.add_argument("--final-points", type=positive_int("--final-points"), default=5,
                   help="front points re-scored for a two-objective study (default 5)")
    s = p.add_argument_group("study")
    s.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage: sqlite:///FILE.db or a PostgreSQL/MySQL URL shared by several processes "
                        "(default: OUT/study.db)")
    s.add_argument("--study", default=None, help="study name (default: METHOD-OBJECTIVE)")
    s.add_argument("--heartbeat", type=positive_int("--heartbeat"), default=10,
                   help="seconds between a running trial's heartbeats; a trial of a killed process is failed after "
                        "3x this (default 10)")
    add_sampler_options(p, steps=16, sampler="dpmpp_2m")
    add_guidance_options(p)
    add_scoring_options(p)
    add_network_options(p)  # --precision, --memory-format, --compile
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the trials' noise streams and of the search (default 0; the re-scoring uses fresh "
                        "seeds)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=None,
                   help="rows per sampling chunk (default by image size and device, as eval)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    p.add_argument("--out", type=output_path("--out", directory=True), default=None,
                   help="output directory (default RUN_DIR/tune/STUDY)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Any:
    from cfgdiff.tuning.study import TuneSettings

    try:
        return TuneSettings(trials=args.trials, n_min=args.n_min, n_max=args.n_max, reduction=args.reduction,
                            final_n=args.final_n, final_points=args.final_points, seed=args.seed,
                            heartbeat=args.heartbeat)
    except ValueError as err:
        raise UsageError(f"tune: {err}") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _param_flags() -> dict[tuple[str, str], str]:
    """(method, parameter) -> its flag without dashes (the key in a config file)."""
    return {(method, name): flag.lstrip("-") for flag, (method, name) in METHOD_FLAGS.items() if name is not None}


def best_config(args: argparse.Namespace, source: Any, params: dict[str, Any], *, w: float,
                interval: tuple[float, float] | None, steps: int) -> dict[str, Any]:
    """The keys of best.toml: options both ``sample`` and ``eval`` take (top level, no table)."""
    flags = _param_flags()
    config: dict[str, Any] = {}
    if source.kind == "run":
        config["run_dir"] = str(args.run_dir)
    else:
        config["diffusers"] = str(args.diffusers)
        if args.null_label is not None:
            config["null-label"] = args.null_label
        if getattr(args, "diffusers_scheduler", None) is not None:
            config["diffusers-scheduler"] = str(args.diffusers_scheduler)
    config.update({"w": [w], "guidance": args.guidance, "sampler": args.sampler, "steps": steps})
    for name, value in params.items():
        flag = flags.get((args.guidance, name))
        if flag is not None:
            config[flag] = value
    for flag in ("guide_run", "classifier"):
        if getattr(args, flag, None) is not None:
            config[flag.replace("_", "-")] = str(getattr(args, flag))
    if interval is not None:
        config["interval"] = [interval[0], interval[1]]
    for key in ("grid", "v_interp", "eta"):
        value = getattr(args, key, None)
        if value is not None and not (key == "v_interp" and args.sampler != "ancestral"):
            config[key.replace("_", "-")] = value
    if args.no_clip:
        config["no-clip"] = True
    return config


def run(args: argparse.Namespace) -> int:
    from cfgdiff.evaluation.sweep import SweepResult, write_sweep
    from cfgdiff.models.presets import default_chunk
    from cfgdiff.runtime.checkpoint import atomic_write_text
    from cfgdiff.tuning.objectives import check_objective, parse_objective
    from cfgdiff.tuning.report import pruning_line, write_tune
    from cfgdiff.tuning.space import parse_search, search_space, split_params
    from cfgdiff.tuning.study import default_storage, open_storage, run_tune

    settings = _settings(args)
    try:
        objective = parse_objective(args.objective) if args.objective is not None else None
        overrides = parse_search(args.search) if args.search is not None else None
    except ValueError as err:
        raise UsageError(f"tune: {err}") from None
    check_scoring_options(args)
    interval_of(args)  # check --interval before any work
    if args.compose is not None or args.guidance == "compose":
        raise UsageError("tune scores class-balanced samples against each class's real images; composed conditions "
                         "have no such reference: draw them with cfgdiff sample --compose")
    if args.interval is not None and args.tune_interval:
        raise UsageError("--interval fixes the guidance interval and --tune-interval searches it: give one")
    net_options = network_options(args)  # an unavailable bf16: one line, before any work
    source = load_model_source(args, ema=not args.raw_weights, device=args.device)
    if source.meta.get("distillation"):
        raise UsageError("a distilled student is already guided: there is nothing to tune")
    if args.batch_size is None:
        args.batch_size = default_chunk(source.data_shape, args.device)
    fixed = method_flag_params(args, args.guidance)  # a method parameter given as a flag is not searched
    try:
        space = search_space(args.guidance, fixed=fixed, overrides=overrides,
                             interval=args.tune_interval, steps=args.tune_steps)
    except ValueError as err:
        raise UsageError(f"tune: {err}") from None
    w_range = next(r for r in space if r.name == "w")
    source.check_guidance([w_range.low, w_range.high], args.guidance)
    choice = guidance_from_args(args, source.eps_fn, ws=[w_range.low, w_range.high], x_bound=source.x_bound,
                                device=args.device, ema=not args.raw_weights)  # checked before any work
    data = source.require_data() if source.kind == "diffusers" else source.data
    spec, scorer, mixture = scorer_for(args, source.meta, data)
    if objective is None:
        objective = parse_objective("fid" if scorer.kind == "images" else "sw")
    try:
        check_objective(objective, scorer.kind)
    except ValueError as err:
        raise UsageError(f"tune: {err}") from None
    study_name = args.study or _slug(f"{args.guidance}-{objective.text}")
    out = args.out if args.out is not None else source.home / "tune" / study_name
    check_writable("--out", out)  # before anything is created or sampled
    n_most = max(args.n_max, getattr(args, "final_n", 0) or 0)
    check_fits_in_memory(f"tune at N = {n_most}", 2 * n_most * math.prod(source.image_shape) * 4,
                         hint="lower --n-max or --final-n")
    if args.storage is None:
        out.mkdir(parents=True, exist_ok=True)  # the default storage is a file in it
    storage = args.storage or default_storage(out)
    try:
        open_storage(storage, args.heartbeat)  # one line for a URL that cannot be opened, before any sampling
    except ValueError as err:
        raise UsageError(f"--storage: {err}") from None
    out.mkdir(parents=True, exist_ok=True)

    def make_run(parts: dict[str, Any]) -> Any:
        return guided_run_from_args(args, source, choice, params=parts["params"], interval=parts["interval"],
                                    steps=parts["steps"], network_options=net_options)

    command = "cfgdiff " + shlex.join(str(a) for a in getattr(args, "argv", ["tune"]))
    print(f"tune: {args.guidance} on {data or source.description}, objective {objective.text}; searching "
          f"{'; '.join(r.describe() for r in space)}; {settings.trials} trials at N = "
          f"{', '.join(str(n) for n in settings.rungs(objective.multi))}; study {study_name!r} in {storage}",
          flush=True)
    bar = progress(settings.trials, "tune (finished trials)", args.no_progress)
    t0 = time.perf_counter()

    def on_trial(record: Any, best: Any) -> None:
        values = ", ".join(f"{v:.4g}" for v in record.values) if record.values else "–"
        setting = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in
                            record.params.items())
        best_text = f"{best.values[0]:.4g} (trial {best.number})" if best is not None and best.values else "–"
        bar.write(f"trial {record.number}: {setting}; N = {record.n}; {record.state}; "
                  f"{'/'.join(objective.metrics)} = {values}" + ("" if record.feasible else " (infeasible)")
                  + ("" if objective.multi else f"; best so far {best_text}"))
        bar.update(1)

    with bar:
        try:
            result = run_tune(make_run, scorer, space, objective, settings, storage=storage, study_name=study_name,
                              on_trial=on_trial)
        except ValueError as err:  # a study of other objectives under that name
            raise UsageError(f"tune: {err}") from None
    seconds = time.perf_counter() - t0
    title = f"cfgdiff tune: {args.guidance} on {data or source.description}, {objective.text}"
    paths = write_tune(result, out, command=command, title=title)
    written = [p.name for p in paths.values()]
    if result.final:
        best = result.final[0]
        parts = split_params(best.trial.params, space)
        steps = parts["steps"] or args.steps
        config = best_config(args, source, parts["params"], w=parts["w"],
                             interval=parts["interval"] or interval_of(args), steps=steps)
        header = [f"{title}: trial {best.trial.number}, re-scored at N = {best.row.n} on fresh seeds.",
                  f"Use it with: cfgdiff sample RUN_DIR --config {out / BEST_FILE}, or cfgdiff eval --config "
                  f"{out / BEST_FILE}"]
        atomic_write_text(out / BEST_FILE, to_toml({}, header=header) + "".join(
            f"{key} = {toml_value(value)}\n" for key, value in config.items()))
        written.append(BEST_FILE)
        final = SweepResult([s.row for s in result.final], {}, {**scorer.meta(settings.final_n)})
        names = tuple(getattr(source.eps_fn, "class_names", ())) or None
        write_sweep(final, out / "final", title=f"{title}: chosen settings re-scored", class_names=names,
                    header_lines=[f"- command: `{command}`",
                                  "- rows: the settings chosen by the tune (trial "
                                  + ", ".join(str(s.trial.number) for s in result.final)
                                  + "), re-scored on fresh seeds"],
                    mixture=mixture)
        written.append("final/")
    print(pruning_line(result))
    for score in result.final:
        row = score.row
        shown = {k: getattr(row, k) for k in ("fid", "fid_std", "kid", "kid_std", "precision", "recall",
                                              "sliced_wasserstein", "sliced_wasserstein_std")}
        text = ", ".join(f"{k} = {v:.4g}" for k, v in shown.items() if v is not None and math.isfinite(v))
        setting = ", ".join(f"{k} = {v:.4g}" for k, v in score.trial.params.items())
        print(f"chosen trial {score.trial.number} ({setting}) re-scored at N = {row.n} on fresh seeds: {text}, "
              f"NFE/sample = {row.nfe_per_sample:g}")
    if not result.final:
        print("no feasible trial finished: nothing chosen (widen the search or lower the recall bound)")
    print(f"wrote {', '.join(written)} to {out} ({seconds:.0f} s)")
    return EXIT_OK

