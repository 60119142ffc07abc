"""``cfgdiff info RUN_DIR``: what a run directory holds, read from checkpoint headers, configs and logs.

Nothing heavy is loaded: the step, the configuration, the data set's description and the network's parameter
count come from the checkpoints' safetensors headers (JSON metadata and tensor shapes) and from the run's
``config.json``/``data.json``/``loss.jsonl``; no weights and no data set are read (only the size of a built-in
data set's test split, when its record lacks it, is computed, which takes milliseconds).

A directory may hold several kinds of run side by side, each with its own file names
(``cfgdiff.training.RunLayout``): a diffusion run or a distilled student (``checkpoint.safetensors``), a noisy
classifier (``classifier.safetensors``) and a feature classifier (``features-checkpoint.safetensors``); ``info``
describes each one it finds. RUN_DIR may also be one checkpoint file, which is then described.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from cfgdiff.cli.arguments import UsageError, positive_int

EXIT_OK = 0

# the kinds of run a directory may hold: (name, what trains it, module and attribute of its RunLayout)
RUN_KINDS = (
    ("diffusion", "cfgdiff train", "cfgdiff.training.rundir", "DIFFUSION_LAYOUT"),
    ("noisy_classifier", "cfgdiff train-classifier", "cfgdiff.training.classifier", "CLASSIFIER_LAYOUT"),
    ("feature_classifier", "cfgdiff train-features", "cfgdiff.training.features", "FEATURES_LAYOUT"),
)


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="what a run directory holds: step, data, config, parameters, losses, checkpoints",
                       description="Describe a run directory (cfgdiff train, train-classifier, train-features or "
                                   "distill) from its checkpoint headers, config and logs, without loading weights "
                                   "or data: step reached and total, data set and sizes, the resolved config, the "
                                   "network's parameter count, the last losses and speed, the checkpoint files and "
                                   "what each --resume changed.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (or one checkpoint file in it)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--losses", type=positive_int("--losses"), default=5,
                   help="how many of the last loss-log lines to show (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = run_info(args.run_dir, losses=args.losses)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_info(info))
    return EXIT_OK


# -- gathering ------------------------------------------------------------------------------------------------


def _layouts() -> list[tuple[str, str, Any]]:
    import importlib

    return [(kind, trainer, getattr(importlib.import_module(module), attr))
            for kind, trainer, module, attr in RUN_KINDS]


def run_info(path: str | os.PathLike, *, losses: int = 5) -> dict[str, Any]:
    """{"run_dir": ..., "runs": [one dict per run found]}; ``UsageError``/``CheckpointError`` (one line) when
    ``path`` holds no readable run."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no run at {path} (no such file or directory)")
    only = path.name if path.is_file() else None
    run_dir = path.parent if only else path
    runs = []
    for kind, trainer, layout in _layouts():
        step_names = {p.name for _, p in layout.step_files(run_dir)}
        if only is not None:
            if only != layout.checkpoint and only not in step_names:
                continue
            checkpoint = path
        else:
            checkpoint = run_dir / layout.checkpoint
            if not checkpoint.exists():
                continue
        runs.append(_one_run(run_dir, layout, kind, trainer, checkpoint, losses))
    if not runs:
        if only is not None:
            raise UsageError(f"{path} is not a checkpoint of a cfgdiff run (a run's checkpoint.safetensors, "
                             "classifier.safetensors, features-checkpoint.safetensors or a step file of one)")
        names = ", ".join(layout.checkpoint for _, _, layout in _layouts())
        raise UsageError(f"{path} holds no cfgdiff run (none of {names})")
    return {"run_dir": str(run_dir), "runs": runs}


def _header(path: Path) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """(the cfgdiff metadata, {tensor name: shape}) of a checkpoint, from its safetensors header only."""
    from safetensors import SafetensorError, safe_open

    from cfgdiff.runtime.checkpoint import CheckpointError, read_metadata

    meta = read_metadata(path)  # CheckpointError for a missing, foreign, truncated header or corrupt metadata
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 - safe_open is no mapping
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({err})") from None
    return meta, shapes


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _log(path: Path, last: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(the last ``last`` loss lines, every event line, lines torn by a kill) of a loss.jsonl."""
    lines, events, torn = [], [], 0
    try:
        text = path.read_text()
    except OSError:
        return [], [], 0
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if not isinstance(entry, dict):
            torn += 1
        elif "event" in entry:
            events.append(entry)
        else:
            lines.append(entry)
    return lines[-last:], events, torn


def _data(meta: dict[str, Any], provenance: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Source, format, shape, sizes and classes of the run's data, from its records (no data loaded)."""
    source = meta.get("data_source") or (provenance if isinstance(provenance, dict) else {}) or {}
    spec = source.get("spec") or meta.get("data_spec") or config.get("data_spec") or {}
    name = spec.get("source") or meta.get("data") or config.get("data")
    split = source.get("test_split") or {}
    train = split.get("train", source.get("count"))
    test = split.get("test")
    if test is None and source.get("total") is not None and source.get("count") is not None:
        test = int(source["total"]) - int(source["count"])
    if test is None and source.get("format") == "builtin" and name:
        from cfgdiff.data import load_dataset  # a built-in set: generated or bundled, milliseconds

        test = load_dataset(name, "test").source.get("count")
    names = list(meta.get("class_names") or [])
    return {
        "source": name, "format": source.get("format"), "path": source.get("path"),
        "shape": meta.get("data_shape") or source.get("shape"),
        "train": train, "test": test, "test_split": split.get("kind"),
        "num_classes": meta.get("num_classes") or source.get("num_classes") or (len(names) or None),
        "class_names": names,
    }


def _checkpoints(run_dir: Path, layout: Any, latest: Path) -> list[dict[str, Any]]:
    from cfgdiff.runtime.checkpoint import CheckpointError, read_metadata

    files = [(latest, True)] + [(p, False) for _, p in layout.step_files(run_dir) if p != latest]
    out = []
    for path, is_latest in files:
        entry: dict[str, Any] = {"file": path.name, "bytes": path.stat().st_size, "latest": is_latest}
        try:
            entry["step"] = int(read_metadata(path).get("step", 0))
        except CheckpointError as err:
            entry["error"] = str(err)
        if is_latest:
            twins = [p.name for _, p in layout.step_files(run_dir) if p != path and _same_file(p, path)]
            if twins:
                entry["same_as"] = twins[0]
        out.append(entry)
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _one_run(run_dir: Path, layout: Any, kind: str, trainer: str, checkpoint: Path, losses: int) -> dict[str, Any]:
    from cfgdiff.distillation import DISTILLATION_KEY

    meta, shapes = _header(checkpoint)
    config = meta.get("train_config")
    config_source = f"{checkpoint.name} (metadata)"
    if not isinstance(config, dict):
        config, config_source = _read_json(run_dir / layout.config), layout.config
    config = config if isinstance(config, dict) else {}
    params = sum(math.prod(shape) for name, shape in shapes.items() if name.startswith("model."))
    log_lines, events, torn = _log(run_dir / layout.loss_log, losses)
    step, total = int(meta.get("step", 0)), config.get("steps")
    from cfgdiff.training.rundir import lock_holder

    record: dict[str, Any] = {
        "kind": kind, "trained_by": trainer, "checkpoint": str(checkpoint),
        "training_now": lock_holder(run_dir),  # the PID of a live trainer of this directory, or None
        "step": step, "steps": total, "complete": total is not None and step >= int(total),
        "format_version": meta.get("format_version", 1), "world_size": meta.get("world_size", 1),
        "skipped_nonfinite": meta.get("skipped_nonfinite", 0),
        "data": _data(meta, _read_json(run_dir / layout.provenance), config),
        "network": meta.get("model_config") or {}, "parameters": params,
        "config": config, "config_source": config_source,
        "losses": log_lines, "steps_per_sec": log_lines[-1].get("steps_per_sec") if log_lines else None,
        "events": events, "torn_log_lines": torn,
        "checkpoints": _checkpoints(run_dir, layout, checkpoint),
    }
    if kind == "diffusion":
        record["perturbable_layers"] = _perturbable_layers(record["network"])
        resolved = run_dir / "resolved_config.toml"
        record["resolved_config"] = str(resolved) if resolved.is_file() else None
    if kind == "diffusion":
        record["objective"] = meta.get("objective", "cfg")  # "gft": guidance-free trained, sampled at w in one row
        if meta.get("guidance_free"):
            record["guidance_free"] = meta["guidance_free"]
    if meta.get(DISTILLATION_KEY):
        record["kind"], record["trained_by"] = "distilled", "cfgdiff distill"
        record.pop("perturbable_layers", None)  # a student is sampled without guidance methods
        record["distillation"] = meta[DISTILLATION_KEY]
    if kind == "noisy_classifier" and meta.get("noisy_test_accuracy"):
        record["noisy_test_accuracy"] = meta["noisy_test_accuracy"]
    if kind == "feature_classifier":
        record["accuracy"] = {k: meta[k] for k in ("test_accuracy", "train_accuracy", "test_count") if k in meta}
        extractor = run_dir / "features.safetensors"
        record["extractor"] = str(extractor) if extractor.is_file() else None
    return record


def _perturbable_layers(network: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """{method: {"layers": [...], "default": [...]}} for PAG and skip-layer guidance, read off the network built from
    its config on the meta device (no weights, no memory); {} for a network without the per-row switch."""
    if not network:
        return {}
    import torch

    from cfgdiff.core.perturbation import PerturbableEpsFn
    from cfgdiff.guidance import GUIDANCE_METHODS
    from cfgdiff.models import build_model

    try:
        with torch.device("meta"):
            model = build_model(network)
    except (ValueError, KeyError, TypeError):
        return {}
    if not isinstance(model, PerturbableEpsFn):
        return {}
    return {name: {"layers": list(model.perturbable_layers(spec.perturbation)),
                   "default": list(model.default_perturbed_layers(spec.perturbation))}
            for name, spec in GUIDANCE_METHODS.items() if spec.perturbation is not None}


_LAYER_FLAGS = {"pag": "--pag-layers", "skip-layer": "--skip-layers"}


# -- for people -----------------------------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _value(v: Any) -> str:
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(", ", ": "))
    return str(v)


_NETWORKS = {"noisy_classifier": "NoisyClassifier", "feature_classifier": "FeatureClassifier"}
_TITLES = {"diffusion": "diffusion model", "distilled": "distilled student", "noisy_classifier": "noisy classifier",
           "feature_classifier": "feature classifier"}


def format_info(info: dict[str, Any]) -> str:
    """The text ``cfgdiff info`` prints."""
    out = []
    for r in info["runs"]:
        state = "complete" if r["complete"] else "incomplete: resume with --resume"
        if r.get("training_now"):
            pid = r["training_now"]
            state = (f"being trained now by process {pid if pid > 0 else '(unknown)'}; step {r['step']} is its "
                     "latest checkpoint")
        out.append(f"{info['run_dir']}: {_TITLES.get(r['kind'], r['kind'])} ({r['trained_by']}), step {r['step']} "
                   f"of {r['steps']} ({state})")
        d = r["data"]
        classes = f"{d['num_classes']} classes" if d["num_classes"] else "classes unknown"
        if d["class_names"]:
            shown = ", ".join(map(str, d["class_names"][:12])) + (", ..." if len(d["class_names"]) > 12 else "")
            classes += f" ({shown})"
        where = f", {d['path']}" if d.get("path") else ""
        split = f" ({d['test_split']})" if d.get("test_split") else ""
        out.append(f"  data: {d['source']} ({d['format'] or 'format unknown'}{where}), shape {d['shape']}, "
                   f"{classes}; train {d['train']}, test {d['test']}{split}")
        arch = r["network"].get("arch") or _NETWORKS.get(r["kind"], "network")
        millions = f" ({r['parameters'] / 1e6:.2f}M)" if r["parameters"] >= 1e6 else ""
        out.append(f"  network: {arch}, {r['parameters']:,} parameters{millions}")
        for method, layers in (r.get("perturbable_layers") or {}).items():
            flag = _LAYER_FLAGS.get(method, "layers")
            out.append(f"  {method} layers ({flag}): {', '.join(layers['layers']) or 'none'} (default "
                       f"{','.join(layers['default']) or 'none'})")
        if r.get("guidance_free"):
            out.append(f"  objective: gft (guidance-free training), w range {_value(r['guidance_free'].get('w_range'))}"
                       "; sample/eval take --w in it at one network row per step")
        if r.get("distillation"):
            dist = r["distillation"]
            teacher = dist.get("teacher") or {}
            teacher_text = teacher.get("run_dir", teacher) if isinstance(teacher, dict) else teacher
            out.append(f"  distillation: {dist.get('stage')} stage, w range {_value(dist.get('w_range'))}, "
                       f"teacher {teacher_text}")
        if r.get("noisy_test_accuracy"):
            acc = ", ".join(f"λ={k}: {v:.3f}" for k, v in r["noisy_test_accuracy"].items())
            out.append(f"  noisy test accuracy: {acc}")
        acc = r.get("accuracy") or {}
        if "test_accuracy" in acc:
            out.append(f"  held-out test accuracy {100 * acc['test_accuracy']:.2f} % ({acc.get('test_count')} "
                       f"images), training images {100 * acc.get('train_accuracy', float('nan')):.2f} %")
        if r["losses"]:
            last = "; ".join(f"step {e.get('step')}: {e.get('loss'):.4g}" if isinstance(e.get("loss"), float)
                             else f"step {e.get('step')}: {e.get('loss')}" for e in r["losses"])
            out.append(f"  last losses: {last}")
            if r["steps_per_sec"] is not None:
                out.append(f"  speed: {r['steps_per_sec']:.3g} steps/s (last log interval), "
                           f"{r['world_size']} process(es)")
        if r["skipped_nonfinite"]:
            out.append(f"  skipped non-finite batches: {r['skipped_nonfinite']}")
        for e in r["events"]:
            if e.get("event") == "resume":
                changed = ", ".join(f"{k} {v[0]} -> {v[1]}" if isinstance(v, list) and len(v) == 2 else f"{k} {v}"
                                    for k, v in (e.get("changed") or {}).items()) or "nothing changed"
                out.append(f"  resumed at step {e.get('step')}: {changed}")
            else:
                rest = ", ".join(f"{k} {_value(v)}" for k, v in e.items() if k not in ("event", "step"))
                out.append(f"  {e.get('event')} at step {e.get('step')}" + (f": {rest}" if rest else ""))
        if r["torn_log_lines"]:
            out.append(f"  log lines torn by a kill (ignored): {r['torn_log_lines']}")
        out.append("  checkpoints:")
        width = max(len(c["file"]) for c in r["checkpoints"])
        for c in r["checkpoints"]:
            note = f"step {c['step']}" if "step" in c else f"UNREADABLE ({c['error']})"
            if c["latest"]:
                note += ", latest" + (f" (same file as {c['same_as']})" if c.get("same_as") else "")
            out.append(f"    {c['file']:<{width}}  {_size(c['bytes']):>10}  {note}")
        out.append(f"  config ({r['config_source']}):")
        items = [f"{k} = {_value(v)}" for k, v in r["config"].items() if v is not None]
        line = "   "
        for item in items:  # wrapped at about 116 columns
            if len(line) + len(item) + 2 > 116 and line.strip():
                out.append(line.rstrip(","))
                line = "   "
            line += f" {item},"
        if line.strip():
            out.append(line.rstrip(","))
        if r.get("resolved_config"):
            out.append(f"  resolved options: {r['resolved_config']} (run again: cfgdiff train --config "
                       f"{r['resolved_config']})")
        if r.get("extractor"):
            out.append(f"  feature network: {r['extractor']} (cfgdiff eval RUN --features {info['run_dir']})")
    return "\n".join(out)
