"""Data benchmark (run by hand, not a test): load times, cache scans, peak memory, streaming vs in-memory training.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data.py --quick            # small sizes, a minute or two
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data.py                    # real sizes; writes the report
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data.py --sections training,train_memory  # after the loader

Sections (``--sections``, comma-separated; by default ``load``, ``folder`` and, without ``--quick``, ``training``
and ``train_memory``):

* ``load``: ``load_dataset`` time of CIFAR-10 binary and of Fashion-MNIST, train and test splits, each in a
  fresh process, with its peak resident memory. CIFAR-10 is not on this machine (nothing is downloaded), so a
  synthetic ``cifar-10-binary.tar.gz`` of the real layout and size (5 × 10 000 training records, 10 000 test
  records, 3073 bytes each, random pixels) is written to a temporary folder first; Fashion-MNIST is the
  Debian package's IDX files (``/usr/share/datasets/fashion-mnist``, ``--fmnist``).
* ``folder``: a generated folder of 10 000 32×32 RGB PNGs in 10 classes (``--quick``: 1000): the first scan
  (listing, decoding into the data cache) and the cached scan (listing, cache hit, memory map), each in a fresh
  process with its peak resident memory.
* ``training`` (for the lead, once the training helper's streaming loader is in; long): training steps per
  second on the PNG folder with the streaming loader (DataLoader, ``--workers``) against the in-memory one at
  the same batch, through ``cfgdiff.training`` (target: streaming >= 90 % of in-memory).
* ``train_memory`` (likewise): peak resident memory while training on CIFAR-10 (synthetic), Fashion-MNIST
  and the PNG folder.
* ``presets`` (by name only): seconds per training step of every model preset (``cfgdiff.models.presets``)
  at its batch size on ``--device``; steps that would take longer than ``--max-step-seconds`` are timed at
  batch 8 and scaled linearly (marked so).

Every measurement runs in its own Python process (``python benchmarks/data.py --child ...``), so each peak
resident memory (``ru_maxrss``) is that of one job; the page cache is warm after the first read of a file (the
figures are for a warm page cache). Writes ``--out`` (Markdown; default ``reports/data_benchmark.md``, not
written with ``--quick`` unless ``--out`` is given) and prints the rows as it goes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

FMNIST = "/usr/share/datasets/fashion-mnist"
ALL_SECTIONS = ("load", "folder", "training", "train_memory", "presets")


# -- synthetic data ----------------------------------------------------------------------------------------


def write_cifar10_binary(path: Path, *, per_batch: int = 10000, batches: int = 5, seed: int = 0) -> Path:
    """A ``cifar-10-binary.tar.gz`` of the real layout: ``cifar-10-batches-bin/data_batch_{1..5}.bin``,
    ``test_batch.bin`` (records of 1 label byte + 3072 pixel bytes) and ``batches.meta.txt``."""
    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def batch() -> bytes:
        records = rng.integers(0, 256, size=(per_batch, 3073), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, size=per_batch)
        return records.tobytes()

    files = {f"data_batch_{i + 1}.bin": batch() for i in range(batches)}
    files["test_batch.bin"] = batch()
    files["batches.meta.txt"] = ("\n".join(names) + "\n\n").encode()
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_png_folder(root: Path, n: int, *, classes: int = 10, size: int = 32, seed: int = 0) -> Path:
    """``n`` random ``size``×``size`` RGB PNGs in ``classes`` class folders (smooth images: PNG compresses them
    as it does photos, unlike white noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(size // 4, size // 4, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
        image.save(folder / f"{i:06d}.png")
    return root


# -- one measurement per process ---------------------------------------------------------------------------


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_load(args: argparse.Namespace) -> dict:
    """Load the splits of one source; time and peak memory (after the imports, whose memory is excluded)."""
    import torch  # noqa: F401 - imported before the baseline, as any user of the data would have it

    from cfgdiff.data import load_dataset

    base = _rss_mib()
    t0 = time.perf_counter()
    sizes = {}
    for split in args.splits.split(","):
        d = load_dataset(args.source, split)
        sizes[split] = [len(d), *d.data_shape]
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": _rss_mib(), "import_rss_mib": base,
            "sizes": sizes, "in_memory": bool(d.in_memory)}


def child_train(args: argparse.Namespace) -> dict:
    """Train ``--steps`` steps on ``--source`` with ``--loader``; steps/s after ``--warmup`` steps; peak memory.

    Uses the training API (``cfgdiff.training.default_config`` and ``train``) with the streaming
    (``loader="streaming"``, DataLoader with ``--workers``) or in-memory (``loader="memory"``) batches."""
    from cfgdiff.data import DataSpec, load_dataset
    from cfgdiff.training import default_config, train

    spec = DataSpec(source=args.source)
    base = _rss_mib()  # after the imports; the peak below includes loading the data, the model and the optimizer
    shape = load_dataset(spec, "train").data_shape
    config = default_config(args.source, data_shape=shape, steps=args.steps, batch_size=args.batch,
                            loader=args.loader, workers=args.workers, checkpoint_every=10**9, log_every=10**9,
                            model={"arch": "unet", "base_channels": 16, "channel_mults": [1, 2, 2],
                                   "num_res_blocks": 1})
    config.data_spec = spec.to_json()
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir:
        train(config, run_dir, on_step=lambda step, loss: stamps.append(time.perf_counter()), handle_signals=False)
    timed = stamps[args.warmup:]
    steps_per_sec = (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")
    return {"steps_per_sec": steps_per_sec, "peak_rss_mib": _rss_mib(), "import_rss_mib": base,
            "loader": args.loader, "workers": args.workers, "batch": args.batch}


def run_child(kind: str, env: dict | None = None, **options) -> dict:
    argv = [sys.executable, __file__, "--child", kind]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {options} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- sections ----------------------------------------------------------------------------------------------


def section_load(work: Path, quick: bool, fmnist: str, rows: list[dict]) -> None:
    per_batch = 1000 if quick else 10000
    t0 = time.perf_counter()
    tar = write_cifar10_binary(work / "cifar-10-binary.tar.gz", per_batch=per_batch)
    print(f"(wrote a synthetic {tar.name}: {tar.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s)")
    sources = [("CIFAR-10 binary (synthetic, .tar.gz)", str(tar))]
    if Path(fmnist).is_dir():
        sources.append(("Fashion-MNIST (IDX, .gz)", fmnist))
    for name, source in sources:
        r = run_child("load", source=source, splits="train,test")
        rows.append({"what": f"load {name}: train + test", "seconds": r["seconds"],
                     "peak_rss_mib": r["peak_rss_mib"], "delta_rss_mib": r["peak_rss_mib"] - r["import_rss_mib"],
                     "note": f"train {r['sizes']['train']}, test {r['sizes']['test']}"})
        print(rows[-1])


def section_folder(work: Path, quick: bool, rows: list[dict]) -> Path:
    n = 1000 if quick else 10000
    folder = work / f"png{n}"
    if not folder.exists():
        t0 = time.perf_counter()
        write_png_folder(folder, n)
        print(f"(wrote {n} PNGs in {time.perf_counter() - t0:.0f} s)")
    cache = work / "cache"
    for label in ("first scan (decode into the cache)", "cached scan (memory map)"):
        r = run_child("load", env={"CFGDIFF_CACHE_DIR": str(cache)}, source=str(folder), splits="all")
        rows.append({"what": f"{n}-image 32x32 PNG folder, {label}", "seconds": r["seconds"],
                     "peak_rss_mib": r["peak_rss_mib"], "delta_rss_mib": r["peak_rss_mib"] - r["import_rss_mib"],
                     "note": f"{r['sizes']['all']}"})
        print(rows[-1])
    return folder


# ---- LEAD: the two sections below call the training API and take minutes each; run them once the streaming
# ---- loader exists (they are not part of --quick).


def section_training(folder: Path, work: Path, rows: list[dict], *, batch: int, steps: int, workers: int) -> None:
    """Training steps/s on the PNG folder: streaming (DataLoader) vs in-memory, same batch and model."""
    env = {"CFGDIFF_CACHE_DIR": str(work / "cache")}
    results = {}
    for loader in ("memory", "streaming"):
        r = run_child("train", env=env, source=str(folder), loader=loader, workers=workers if loader == "streaming"
                      else 0, batch=batch, steps=steps, warmup=max(2, steps // 10))
        results[loader] = r["steps_per_sec"]
        rows.append({"what": f"training on the PNG folder, {loader} loader"
                             + (f" ({workers} workers)" if loader == "streaming" else ""),
                     "seconds": 1 / r["steps_per_sec"], "peak_rss_mib": r["peak_rss_mib"],
                     "delta_rss_mib": r["peak_rss_mib"] - r["import_rss_mib"],
                     "note": f"{r['steps_per_sec']:.2f} steps/s at batch {batch} (seconds = s/step)"})
        print(rows[-1])
    ratio = results["streaming"] / results["memory"]
    nan = float("nan")
    rows.append({"what": "streaming / in-memory steps per second", "seconds": nan, "peak_rss_mib": nan,
                 "delta_rss_mib": nan, "note": f"{100 * ratio:.0f} % (target >= 90 %)"})
    print(rows[-1])


def section_train_memory(sources: list[tuple[str, str]], work: Path, rows: list[dict], *, batch: int,
                         steps: int) -> None:
    """Peak resident memory while training a few steps on each data set (in-memory loader where it fits)."""
    env = {"CFGDIFF_CACHE_DIR": str(work / "cache")}
    for name, source in sources:
        r = run_child("train", env=env, source=source, loader="auto", workers=0, batch=batch, steps=steps,
                      warmup=1)
        rows.append({"what": f"peak memory while training on {name}", "seconds": 1 / r["steps_per_sec"],
                     "peak_rss_mib": r["peak_rss_mib"], "delta_rss_mib": r["peak_rss_mib"] - r["import_rss_mib"],
                     "note": f"{steps} steps at batch {batch} (seconds = s/step)"})
        print(rows[-1])


# -- model presets: seconds per training step ---------------------------------------------------------------


def time_preset(shape: tuple[int, ...], size: str, device: str, *, batch: int, steps: int) -> float:
    """Seconds per training step of a preset's network at ``batch``: Algorithm 1's loss (label dropout, λ from
    the cosine schedule, z = α x + σ ε, ε-MSE), backward, gradient clipping and an AdamW step (no EMA, no
    data loading); one warm-up step, then the mean of ``steps`` timed steps."""
    import torch

    from cfgdiff.core.diffusion import diffuse, loss_eps_mse
    from cfgdiff.core.schedule import sample_logsnr
    from cfgdiff.models import build_model
    from cfgdiff.models.presets import preset_for

    preset = preset_for(shape, size)
    config = {**preset["model"], "num_classes": 10}
    config.update({"image_shape": list(shape)} if len(shape) == 3 else {"dim": shape[0]})
    model = build_model(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=preset["lr"])
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, *shape, generator=g, device=device) * 2 - 1

    def step() -> None:
        labels = torch.randint(0, 11, (batch,), generator=g, device=device)  # 10 = the null label
        logsnr = sample_logsnr(batch, "cosine", generator=g, device=device)
        eps = torch.randn(x.shape, generator=g, device=device)
        loss = loss_eps_mse(model(diffuse(x=x, eps=eps, logsnr=logsnr), logsnr, labels), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def section_presets(device: str, rows: list[dict], *, max_step_seconds: float, probe_batch: int = 8,
                    only: set[str] | None = None) -> list[dict]:
    """s/step of every preset at its batch size. Where a step at the preset's batch would take longer than
    ``max_step_seconds`` (judged from a probe at ``probe_batch``), the probe's time is scaled linearly to the
    preset's batch and marked as such."""
    import torch

    from cfgdiff.models.presets import preset_table

    torch.manual_seed(0)
    table = []
    for row in preset_table():
        if only and f"{row['family']}/{row['size']}" not in only:
            continue
        shape, size, batch = tuple(row["data_shape"]), row["size"], row["batch_size"]
        probe = time_preset(shape, size, device, batch=probe_batch, steps=2)
        estimate = probe * batch / probe_batch
        if estimate <= max_step_seconds:
            seconds = time_preset(shape, size, device, batch=batch, steps=3 if estimate < 2 else 1)
            how = "measured"
        else:
            seconds, how = estimate, f"scaled from batch {probe_batch}"
        entry = {"family": row["family"], "size": size, "params": row["params"], "batch": batch,
                 "s_per_step": seconds, "how": how, "device": device, "cpu_default": row["cpu_default"]}
        table.append(entry)
        rows.append({"what": f"preset {row['family']}/{size} ({row['params'] / 1e6:.2f}M), one training step",
                     "seconds": seconds, "peak_rss_mib": _rss_mib(), "delta_rss_mib": float("nan"),
                     "note": f"batch {batch} on {device}, {how}"})
        print(json.dumps(entry), flush=True)
    return table


# -- report ------------------------------------------------------------------------------------------------


def write_report(path: Path, rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Data benchmark",
        "",
        f"`benchmarks/data.py {' '.join(sys.argv[1:])}` on {platform.node()} ({os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {time.strftime('%Y-%m-%d %H:%M')}.",
        "Each row ran in its own process; peak RSS is that process's maximum resident memory, delta is the part",
        "above the memory after importing torch and cfgdiff. CIFAR-10 is a synthetic file of the real binary",
        "layout and size (random pixels), since the real one is not on this machine.",
        "",
        "| what | seconds | peak RSS (MiB) | delta (MiB) | note |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['what']} | {r['seconds']:.2f} | {r['peak_rss_mib']:.0f} | {r['delta_rss_mib']:.0f} | "
                     f"{r['note']} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small synthetic sizes; no training sections")
    p.add_argument("--sections", default=None, help=f"comma-separated, from {', '.join(ALL_SECTIONS)}")
    p.add_argument("--fmnist", default=FMNIST, help="the Fashion-MNIST IDX folder")
    p.add_argument("--work", type=Path, default=None, help="folder for generated data (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="report (default reports/data_benchmark.md; none --quick)")
    p.add_argument("--batch", type=int, default=128, help="training sections: batch size")
    p.add_argument("--steps", type=int, default=100, help="training sections: steps per run")
    p.add_argument("--workers", type=int, default=2, help="training section: streaming loader workers")
    p.add_argument("--device", default="cpu", help="presets section: the device (cpu, cuda)")
    p.add_argument("--max-step-seconds", type=float, default=20.0,
                   help="presets section: steps slower than this are scaled from a small batch, not run")
    p.add_argument("--presets-json", type=Path, default=None, help="presets section: also write its rows here")
    p.add_argument("--presets-only", default=None, help="presets section: only these, e.g. 32x32/small,64x64/small")
    # child mode (one measurement in this fresh process)
    p.add_argument("--child", choices=("load", "train"), help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--splits", default="train", help=argparse.SUPPRESS)
    p.add_argument("--loader", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = child_load(args) if args.child == "load" else child_train(args)
        print(json.dumps(result))
        return 0
    sections = (args.sections.split(",") if args.sections else
                ["load", "folder"] + ([] if args.quick else ["training", "train_memory"]))
    unknown = set(sections) - set(ALL_SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cfgdiff-data-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "load" in sections:
            section_load(work, args.quick, args.fmnist, rows)
        folder = None
        if {"folder", "training", "train_memory"} & set(sections):
            folder = section_folder(work, args.quick, rows)
        if "training" in sections:
            section_training(folder, work, rows, batch=args.batch, steps=args.steps, workers=args.workers)
        if "train_memory" in sections:
            tar = work / "cifar-10-binary.tar.gz"
            if not tar.exists():
                write_cifar10_binary(tar, per_batch=1000 if args.quick else 10000)
            sources = [("CIFAR-10 binary (synthetic)", str(tar)), ("Fashion-MNIST", args.fmnist),
                       ("the PNG folder", str(folder))]
            section_train_memory(sources, work, rows, batch=args.batch, steps=max(5, args.steps // 10))
        if "presets" in sections:
            only = set(args.presets_only.split(",")) if args.presets_only else None
            table = section_presets(args.device, rows, max_step_seconds=args.max_step_seconds, only=only)
            if args.presets_json is not None:
                args.presets_json.write_text(json.dumps(table, indent=1) + "\n")
    out = args.out if args.out is not None else (None if args.quick else Path("reports/data_benchmark.md"))
    if out is not None:
        write_report(out, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
