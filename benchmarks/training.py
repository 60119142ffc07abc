"""Training benchmark (run by hand, not a test): cfgdiff's loop against lucidrains', DDP, memory, sampling chunk.

    .venv/bin/python benchmarks/training.py --out reports/training_benchmark.md      # the full run (~30-45 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/training.py --quick --out /tmp/training_quick.md  # smoke test

Sections (``--sections``, comma-separated; all by default), every ratio measured side by side in one run, every
figure the median of ``--repeats`` repeats with its range (min – max):

* ``trainer``: training throughput (images/s) of cfgdiff's ``Trainer.train_step`` against lucidrains'
  denoising-diffusion-pytorch training loop on the very same network (the same initial weights) and batch. The
  lucidrains side is its class-conditional ``GaussianDiffusion`` (classifier_free_guidance.py: ``forward`` →
  ``p_losses``, ε-objective, cosine β table, T = 1000), its ``Trainer.train`` step re-typed line for line
  (``Accelerator.autocast``/``backward``/``clip_grad_norm_``, ``Adam(β = (0.9, 0.99))``, ``zero_grad``,
  ``ema_pytorch.EMA(beta = 0.995, update_every = 10).update()``), with its ``DataLoader`` settings (shuffle,
  ``num_workers = cpu_count()``, pin_memory) and, as a second row, in-memory batches (no workers). Its
  ``Trainer`` class itself cannot be imported here: its module imports torchvision, whose only wheels on PyPI are
  CUDA builds that do not load against a CPU torch; the one thing not run is its ``Dataset`` (PIL + torchvision
  transforms of image files), replaced by the same uint8 images as float tensors in [0, 1] (what its
  ``ToTensor`` returns). cfgdiff's network is wrapped into lucidrains' ``model(x, t, classes)`` interface: t maps
  to λ_t = log(ᾱ_t/(1 - ᾱ_t)) of its own table, and labels are dropped to the null class with p = 0.1 as its
  Unet's ``cond_drop_prob`` does. lucidrains is looked for on ``--lucidrains-path`` (a ``pip install --no-deps
  --target`` folder with denoising-diffusion-pytorch, einops, ema-pytorch, accelerate, psutil).
* ``ddp``: 2 gloo processes (torchrun) against 1 process at the same global batch on this machine, with the
  same total threads (1 × T against 2 × T/2): time per step and the overhead of the split.
* ``memory``: peak memory of training (the preset's batch) and of guided sampling (the default chunk) for the
  digits (8×8 base), 28×28 small and 32×32 small presets, each in a fresh process: peak resident set (VmHWM, and
  its rise over the process after imports) on a CPU, ``torch.cuda.max_memory_allocated`` on CUDA; sampling at
  N = 250, 1000, 4000 to show that it is flat in N (samples stream in chunks, as ``cfgdiff eval`` consumes them).
* ``chunks``: images/s of guided sampling (``cfgdiff.sampling.pipeline.GuidedRun``, the path of ``cfgdiff
  sample`` and ``eval``) at chunks of 64/128/256/512 rows, at torch's default thread count (no OMP_NUM_THREADS, as
  a user runs it) and at 1 thread, on the digits network and the 28×28 small network (random weights: the cost does
  not depend on them); on CUDA too with ``--device cuda``. The best chunk per setting is named.

Synthetic data (random uint8 images, 10 classes) stands in for 28×28 and 32×32 data; digits is the real set.
Writes ``--out`` (Markdown) and the rows as CSV beside it; prints the tables as it goes.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from markdown_report import Report  # beside this script

ALL_SECTIONS = ("trainer", "ddp", "memory", "chunks")
PRESETS = {"digits": ((1, 8, 8), None), "28x28/small": ((1, 28, 28), "small"), "32x32/small": ((3, 32, 32), "small")}
RESULT = "RESULT "  # a worker's last stdout line: RESULT {json}


# -- shared pieces -------------------------------------------------------------------------------------


def make_dataset(preset: str, n: int = 2048):
    """The digits training split, or ``n`` random uint8 images of the preset's shape with labels i mod 10."""
    from cfgdiff.data import Dataset, load_dataset

    if preset == "digits":
        return load_dataset("digits", "train")
    shape, _ = PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    stored = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return Dataset(f"random-{preset}", stored, torch.arange(n) % 10, 10, tuple(str(c) for c in range(10)), 1.0,
                   pixel_max=255, source={"format": "synthetic", "count": n})


def make_config(preset: str, **overrides):
    """cfgdiff's TrainConfig of a preset (digits: the digits defaults = 8×8 base)."""
    from cfgdiff.training import default_config

    shape, size = PRESETS[preset]
    if preset == "digits":
        return default_config("digits", **overrides)
    return default_config(f"random-{preset}", data_shape=shape, size=size, **overrides)


def random_network(preset: str, device: str):
    """The preset's U-Net with random weights (its zero-initialised output conv re-drawn, so ε̂ is not 0)."""
    from cfgdiff.models import build_model

    shape, _ = PRESETS[preset]
    torch.manual_seed(0)
    net = build_model({**make_config(preset).model, "image_shape": list(shape), "num_classes": 10})
    torch.nn.init.normal_(net.conv_out.weight, std=0.02)
    net.data_shape = shape
    return net.to(device).eval().requires_grad_(False)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt_spread(s: dict, digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f} – {s['max']:.{digits}f})"


def _proc_status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (Linux), MiB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_now_mb() -> float:
    """Current resident set of this process, MiB (Linux /proc; psutil elsewhere)."""
    now = _proc_status_mb("VmRSS")
    if now is None:
        import psutil

        now = psutil.Process().memory_info().rss / 2**20
    return now


def rss_peak_mb() -> float:
    """Peak resident set of this process so far, MiB: VmHWM on Linux (ru_maxrss would carry the parent's peak
    over fork + exec), else ru_maxrss (bytes on macOS)."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def machine_line(threads: int | None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"Machine: {cpu}, {os.cpu_count()} CPUs visible{gpu}; torch {torch.__version__}; Python "
            f"{platform.python_version()}; threads: {threads if threads else 'torch default'} (section 4 sets its "
            f"own); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def run_worker(kind: str, spec: dict, *, threads: int | None, nproc: int = 1, timeout: float = 3600) -> dict:
    """This script as ``--worker KIND`` in a fresh process (under torchrun for nproc > 1); its RESULT json.
    ``threads`` None: no OMP_NUM_THREADS/MKL_NUM_THREADS (torch's default thread count)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
        if threads is not None:
            env[name] = str(threads)
    command = [__file__, "--worker", kind, "--spec", json.dumps(spec)]
    if nproc > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *command]
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} {spec} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len(RESULT):])


# -- section 1: cfgdiff's Trainer against lucidrains' loop -----------------------------------------------


def load_lucidrains(path: str):
    """(classifier_free_guidance module, ema_pytorch.EMA, accelerate.Accelerator, version) from ``path``."""
    import importlib.util

    if path and path not in sys.path:
        sys.path.append(path)  # appended: our own packages win
    spec = importlib.util.find_spec("denoising_diffusion_pytorch")
    if spec is None:
        raise ImportError(f"no denoising_diffusion_pytorch on {path}; pip install --no-deps --target {path} "
                          "denoising-diffusion-pytorch einops ema-pytorch accelerate psutil")
    file = Path(spec.submodule_search_locations[0]) / "classifier_free_guidance.py"
    module_spec = importlib.util.spec_from_file_location("ddp_classifier_free_guidance", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # the package __init__ is not run: it imports torchvision
    from accelerate import Accelerator
    from ema_pytorch import EMA

    version = "?"
    for dist in file.parents[1].glob("denoising_diffusion_pytorch-*.dist-info"):
        version = dist.name.split("-")[1].removesuffix(".dist")
    return module, EMA, Accelerator, version


class CfgdiffNetForLucidrains(torch.nn.Module):
    """cfgdiff's ε-network behind lucidrains' ``model(x, t, classes)``: t -> λ_t = log(ᾱ_t / (1 - ᾱ_t)) of the
    diffusion's ᾱ table (its x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε is our latent at λ_t); labels dropped to the
    null class K with probability ``cond_drop_prob`` (what its Unet does with a learned null embedding)."""

    def __init__(self, net, cond_drop_prob: float) -> None:
        super().__init__()
        self.net, self.cond_drop_prob = net, cond_drop_prob
        self.channels = self.out_dim = net.data_shape[0]
        self.self_condition = False
        self.random_or_learned_sinusoidal_cond = False
        self.register_buffer("logsnr_table", torch.zeros(1), persistent=False)

    def attach(self, diffusion) -> None:
        ac = diffusion.alphas_cumprod.double()
        self.logsnr_table = (torch.log(ac) - torch.log1p(-ac)).float()

    def forward(self, x, time, classes, cond_keep_mask=None):
        drop = torch.rand(classes.shape, device=classes.device) < self.cond_drop_prob
        labels = torch.where(drop, torch.full_like(classes, self.net.num_classes), classes)
        return self.net(x, self.logsnr_table[time], labels)


class ImagesInUnitRange(torch.utils.data.Dataset):
    """(image as float in [0, 1], label): what lucidrains' Dataset returns after ``ToTensor``, without the files."""

    def __init__(self, dataset) -> None:
        self.stored, self.labels, self.scale = dataset.stored, dataset.labels, float(dataset.pixel_max)

    def __len__(self) -> int:
        return self.stored.shape[0]

    def __getitem__(self, i):
        return self.stored[i].float() / self.scale, self.labels[i]


class LucidrainsLoop:
    """lucidrains' Trainer.__init__ and the body of Trainer.train's step, re-typed (see the module docstring)."""

    def __init__(self, ddp, EMA, Accelerator, net, dataset, *, batch_size: int, workers: int) -> None:
        self.accelerator = Accelerator(split_batches=True, mixed_precision="no")
        model = CfgdiffNetForLucidrains(net, cond_drop_prob=0.1)
        diffusion = ddp.GaussianDiffusion(model, image_size=dataset.stored.shape[-1], timesteps=1000)
        model.attach(diffusion)
        dl = torch.utils.data.DataLoader(ImagesInUnitRange(dataset), batch_size=batch_size, shuffle=True,
                                         pin_memory=True, num_workers=workers, drop_last=True)
        self.dl = cycle_forever(self.accelerator.prepare(dl))
        self.opt = torch.optim.Adam(diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.ema = EMA(diffusion, beta=0.995, update_every=10)
        self.ema.to(self.accelerator.device)
        self.model, self.opt = self.accelerator.prepare(diffusion, self.opt)
        self.max_grad_norm = 1.0

    def step(self) -> float:
        accelerator = self.accelerator
        self.model.train()
        data, classes = next(self.dl)
        data, classes = data.to(accelerator.device), classes.to(accelerator.device)
        with accelerator.autocast():
            loss = self.model(data, classes=classes)
            total_loss = loss.item()
        accelerator.backward(loss)
        accelerator.wait_for_everyone()
        accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad()
        accelerator.wait_for_everyone()
        self.ema.update()
        return total_loss


def cycle_forever(loader):
    """lucidrains' ``cycle``: the loader's batches, epoch after epoch."""
    while True:
        yield from loader


def time_steps(step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def section_trainer(rep: Report, args) -> None:
    from cfgdiff.training import diffusion_trainer

    try:
        ddp, EMA, Accelerator, version = load_lucidrains(args.lucidrains_path)
    except ImportError as err:
        rep.text(f"## 1. Trainer against lucidrains: skipped ({err})")
        return
    rep.text(f"## 1. Training throughput: cfgdiff Trainer against lucidrains denoising-diffusion-pytorch {version}")
    rep.text("")
    rep.text(f"Same network and initial weights, same batch, {args.train_steps} timed steps after "
             f"{args.train_warmup} warm-up steps per repeat, {args.repeats} repeats interleaved (cfgdiff, lucidrains "
             f"with its DataLoader of {os.cpu_count()} workers, lucidrains in-memory); {torch.get_num_threads()} "
             "thread(s), CPU. images/s: median (min – max); ratio = cfgdiff / lucidrains per repeat.")
    rows = []
    for preset in args.train_presets:
        dataset = make_dataset(preset)
        config = make_config(preset, device=args.device, seed=0, warmup_steps=0)
        batch = args.train_batch or config.batch_size
        config.batch_size = batch
        trainer = diffusion_trainer(config, dataset)
        net = copy.deepcopy(trainer.model)  # the very same initial weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pin_memory without an accelerator
            loops = {"cfgdiff Trainer.train_step": trainer.train_step,
                     "lucidrains loop, its DataLoader": LucidrainsLoop(ddp, EMA, Accelerator, net, dataset,
                                                                       batch_size=batch,
                                                                       workers=os.cpu_count() or 1).step,
                     "lucidrains loop, in-memory batches": LucidrainsLoop(ddp, EMA, Accelerator,
                                                                          copy.deepcopy(net), dataset,
                                                                          batch_size=batch, workers=0).step}
            for step in loops.values():
                time_steps(step, args.train_warmup)
            per_loop: dict[str, list[float]] = {name: [] for name in loops}
            for _ in range(args.repeats):
                for name, step in loops.items():
                    per_loop[name].append(batch * args.train_steps / time_steps(step, args.train_steps))
        ours = per_loop["cfgdiff Trainer.train_step"]
        for name, values in per_loop.items():
            ratio = [a / b for a, b in zip(ours, values, strict=True)]
            rows.append({"preset": preset, "batch": batch, "loop": name, "images_per_s": fmt_spread(spread(values)),
                         "cfgdiff_over_this": fmt_spread(spread(ratio), 2)})
        n_params = sum(p.numel() for p in net.parameters())
        rep.text(f"- {preset}: {n_params / 1e6:.2f}M parameters, batch {batch}")
    rep.table("trainer", rows, ["preset", "batch", "loop", "images_per_s", "cfgdiff_over_this"])
    rep.text("What differs per step (the network, its forward and backward, the batch and the clipping are the "
             "same): cfgdiff draws λ from the cosine log-SNR schedule and labels/ε on one generator, indexes uint8 "
             "images held in memory and converts them on the device, uses AdamW with a warm-up factor, and "
             "updates its EMA every step (lucidrains every 10th); lucidrains draws an integer t and gathers its "
             "ᾱ table, runs an Accelerator (autocast context, backward, clip_grad_norm_, two wait_for_everyone), "
             "Adam, and pulls each batch through a DataLoader (collating per-image tensors; with workers, "
             "inter-process transfer on the same cores).")


# -- section 2: DDP against one process -------------------------------------------------------------------


def worker_ddp(spec: dict) -> dict:
    from cfgdiff.training import diffusion_trainer, init_distributed

    torch.set_num_threads(spec["threads"])
    ctx = init_distributed("cpu")
    try:
        config = make_config(spec["preset"], batch_size=spec["batch"], seed=0, warmup_steps=0)
        trainer = diffusion_trainer(config, make_dataset(spec["preset"]), dist=ctx)
        for _ in range(spec["warmup"]):
            trainer.train_step()
        times = []
        for _ in range(spec["repeats"]):
            ctx.barrier()
            t0 = time.perf_counter()
            for _ in range(spec["steps"]):
                trainer.train_step()
            ctx.barrier()
            times.append((time.perf_counter() - t0) / spec["steps"])
        return {"world_size": ctx.world_size, "threads": torch.get_num_threads(), "seconds_per_step": times}
    finally:
        ctx.shutdown()


def section_ddp(rep: Report, args) -> None:
    threads = args.threads or os.cpu_count() or 2
    half = max(1, threads // 2)
    rep.text(f"## 2. DistributedDataParallel: 2 gloo processes × {half} thread(s) against 1 process × {threads} "
             "thread(s), same global batch")
    rep.text("")
    rep.text(f"torchrun --standalone --nproc_per_node 2 against a plain process; {args.ddp_steps} timed steps "
             f"after {args.ddp_warmup} warm-up steps, {args.repeats} repeats (launches alternate), each the mean "
             "step time of its steps; ms/step: median (min – max) over repeats.")
    rows = []
    for preset in args.ddp_presets:
        batch = args.train_batch or make_config(preset).batch_size
        spec = {"preset": preset, "batch": batch, "steps": args.ddp_steps, "warmup": args.ddp_warmup, "repeats": 1}
        one, two = [], []
        for _ in range(args.repeats):
            one += run_worker("ddp", {**spec, "threads": threads}, threads=threads)["seconds_per_step"]
            two += run_worker("ddp", {**spec, "threads": half}, threads=half, nproc=2)["seconds_per_step"]
        ratio = [b / a for a, b in zip(one, two, strict=True)]
        rows.append({"preset": preset, "global_batch": batch,
                     f"1 proc × {threads} thr, ms/step": fmt_spread(spread([1e3 * t for t in one])),
                     f"2 proc × {half} thr, ms/step": fmt_spread(spread([1e3 * t for t in two])),
                     "overhead ms/step": fmt_spread(spread([1e3 * (b - a) for a, b in zip(one, two, strict=True)])),
                     "2 proc / 1 proc": fmt_spread(spread(ratio), 2)})
    rep.table("ddp", rows, list(rows[0]))
    rep.text("The 2-process step computes half the batch per process, then all-reduces the gradients (gloo, "
             "bucketed, over localhost) and the loss. A ratio above 1 is that communication plus the cost of "
             "running two smaller batches on the same cores; a ratio below 1 means the two single-thread "
             "processes use the cores better than one process's intra-op threads, by more than the all-reduce "
             "costs (a negative overhead).")


# -- section 3: peak memory ---------------------------------------------------------------------------------


def worker_memory(spec: dict) -> dict:
    from cfgdiff.sampling.generate import DEFAULT_BATCH_SIZE
    from cfgdiff.sampling.pipeline import GuidedRun
    from cfgdiff.training import diffusion_trainer

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    cuda = device.startswith("cuda")
    base_rss = rss_now_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if spec["mode"] == "train":
        config = make_config(spec["preset"], device=device, seed=0)
        trainer = diffusion_trainer(config, make_dataset(spec["preset"]))
        for _ in range(spec["steps"]):
            trainer.train_step()
        detail = {"batch": config.batch_size}
    else:
        net = random_network(spec["preset"], device)
        labels = torch.arange(spec["n"]) % 10
        rows = 0
        run = GuidedRun(net, steps=spec["steps"], device=device, batch_size=DEFAULT_BATCH_SIZE)
        for x in run.iter_samples(labels, 1.0, seed=0):
            rows += x.shape[0]  # consumed chunk by chunk, as eval's scorers do
        detail = {"n": spec["n"], "chunk": DEFAULT_BATCH_SIZE, "rows": rows}
    result = {"peak_rss_mb": rss_peak_mb(), "rss_after_imports_mb": base_rss, **detail}
    if cuda:
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def section_memory(rep: Report, args) -> None:
    threads = args.threads or os.cpu_count() or 1
    rep.text("## 3. Peak memory (each figure from a fresh process)")
    rep.text("")
    what = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak resident set (VmHWM)"
    rep.text(f"{what}; 'rise' = peak minus the resident set after imports. Training: {args.memory_train_steps} "
             f"steps at the preset's batch. Sampling: guided ancestral, {args.memory_sample_steps} steps, "
             "chunks of the default size, consumed one at a time.")
    rows = []
    for preset in args.memory_presets:
        jobs = [("train", None)] + [("sample", n) for n in args.memory_n]
        for mode, n in jobs:
            spec = {"preset": preset, "mode": mode, "n": n, "device": args.device, "threads": threads,
                    "steps": args.memory_train_steps if mode == "train" else args.memory_sample_steps}
            r = run_worker("memory", spec, threads=threads)
            row = {"preset": preset, "what": f"train, batch {r['batch']}" if mode == "train" else
                   f"sample N = {n}, chunk {r['chunk']}",
                   "peak RSS MiB": f"{r['peak_rss_mb']:.0f}",
                   "rise over imports MiB": f"{r['peak_rss_mb'] - r['rss_after_imports_mb']:.0f}"}
            if "cuda_max_allocated_mb" in r:
                row["CUDA max allocated MiB"] = f"{r['cuda_max_allocated_mb']:.1f}"
            rows.append(row)
            print(f"  {preset} {row['what']}: {row['peak RSS MiB']} MiB", flush=True)
    rep.table("memory", rows, list(rows[0]))


# -- section 4: the sampling chunk --------------------------------------------------------------------------


def worker_chunks(spec: dict) -> dict:
    from cfgdiff.sampling.pipeline import GuidedRun

    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    device = spec["device"]
    net = random_network(spec["preset"], device)
    labels = torch.arange(spec["n"]) % 10

    def run(chunk: int, n: int) -> float:
        t0 = time.perf_counter()
        for _ in GuidedRun(net, steps=spec["steps"], device=device, batch_size=chunk).iter_samples(labels[:n], 1.0,
                                                                                                    seed=0):
            pass
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for chunk in spec["chunks"]:  # warm-up: thread pool, kernels and allocations of every chunk shape
        run(chunk, min(spec["n"], chunk))
    per_chunk: dict[int, list[float]] = {c: [] for c in spec["chunks"]}
    for _ in range(spec["repeats"]):
        for chunk in spec["chunks"]:
            per_chunk[chunk].append(spec["n"] / run(chunk, spec["n"]))
    return {"threads": torch.get_num_threads(), "images_per_s": {str(c): v for c, v in per_chunk.items()}}


def section_chunks(rep: Report, args) -> None:
    from cfgdiff.sampling.generate import DEFAULT_BATCH_SIZE

    rep.text("## 4. Sampling chunk: images/s of guided sampling against the chunk size")
    rep.text("")
    rep.text(f"cfgdiff.sampling.pipeline.GuidedRun (guided, w = 1, ancestral, {args.chunk_steps} steps, "
             f"{args.chunk_n} images per measurement, {args.repeats} repeats interleaved over the chunk sizes); "
             f"images/s: median (min – max). Defaults today: `cfgdiff sample --batch-size` {DEFAULT_BATCH_SIZE}, "
             "`cfgdiff eval --batch-size` 250.")
    settings = [("cpu", None), ("cpu", 1)]
    if args.device.startswith("cuda"):
        settings.append((args.device, None))
    rows, best = [], []
    for preset in args.chunk_presets:
        for device, threads in settings:
            spec = {"preset": preset, "device": device, "threads": threads, "chunks": args.chunks,
                    "n": args.chunk_n, "steps": args.chunk_steps, "repeats": args.repeats}
            r = run_worker("chunks", spec, threads=threads)
            setting = f"{device}, {r['threads']} thread(s)" + (" (torch default)" if threads is None else "")
            medians = {int(c): statistics.median(v) for c, v in r["images_per_s"].items()}
            top = max(medians, key=medians.get)
            for chunk, values in r["images_per_s"].items():
                rows.append({"network": preset, "setting": setting, "chunk": chunk,
                             "images_per_s": fmt_spread(spread(values)),
                             "vs chunk 64": f"{medians[int(chunk)] / medians[64]:.2f}" if 64 in medians else ""})
            best.append({"network": preset, "setting": setting, "best chunk": top,
                         "best / 64": f"{medians[top] / medians[64]:.2f}" if 64 in medians else ""})
            print(f"  {preset} {setting}: best chunk {top}", flush=True)
    rep.table("chunks", rows, ["network", "setting", "chunk", "images_per_s", "vs chunk 64"])
    rep.table("chunks_best", best, ["network", "setting", "best chunk", "best / 64"])


# -- main ------------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _names(text: str) -> list[str]:
    names = [v for v in text.split(",") if v]
    for name in names:
        if name not in PRESETS:
            raise argparse.ArgumentTypeError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return names


WORKERS = {"ddp": worker_ddp, "memory": worker_memory, "chunks": worker_chunks}
QUICK = {"repeats": 1, "train_steps": 2, "train_warmup": 1, "train_batch": 16, "train_presets": ["digits"],
         "ddp_steps": 2, "ddp_warmup": 1, "ddp_presets": ["digits"], "memory_presets": ["digits"],
         "memory_n": [64, 128], "memory_train_steps": 1, "memory_sample_steps": 2, "chunk_presets": ["digits"],
         "chunks": [16, 64], "chunk_n": 64, "chunk_steps": 2}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(ALL_SECTIONS), help=f"comma-separated from {ALL_SECTIONS}")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that every section runs (seconds)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for sections 1-3 (default: torch's default, the cores); section 4 measures "
                        "torch's default and 1 thread")
    p.add_argument("--device", default="cpu", help="cpu or cuda (sections 3 and 4; 1 and 2 run on the CPU)")
    p.add_argument("--out", type=Path, default=Path("reports/training_benchmark.md"))
    p.add_argument("--repeats", type=int, default=5, help="repeats of every measurement (median and range)")
    p.add_argument("--lucidrains-path", default="/tmp/ddp-site",
                   help="a pip --target folder with denoising-diffusion-pytorch, einops, ema-pytorch, accelerate, "
                        "psutil")
    p.add_argument("--train-presets", type=_names, default=["digits", "28x28/small"])
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default: the preset's)")
    p.add_argument("--train-steps", type=int, default=20, help="timed steps per repeat (section 1)")
    p.add_argument("--train-warmup", type=int, default=5)
    p.add_argument("--ddp-presets", type=_names, default=["digits", "28x28/small"])
    p.add_argument("--ddp-steps", type=int, default=30)
    p.add_argument("--ddp-warmup", type=int, default=5)
    p.add_argument("--memory-presets", type=_names, default=list(PRESETS))
    p.add_argument("--memory-n", type=_ints, default=[250, 1000, 4000])
    p.add_argument("--memory-train-steps", type=int, default=5)
    p.add_argument("--memory-sample-steps", type=int, default=4)
    p.add_argument("--chunk-presets", type=_names, default=["digits", "28x28/small"])
    p.add_argument("--chunks", type=_ints, default=[64, 128, 256, 512])
    p.add_argument("--chunk-n", type=int, default=512, help="images per chunk measurement")
    p.add_argument("--chunk-steps", type=int, default=8, help="sampling steps (the per-step cost is what varies)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.spec))
        if int(os.environ.get("RANK", "0")) == 0:
            print(RESULT + json.dumps(result), flush=True)
        return 0
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(ALL_SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {ALL_SECTIONS}")
    if args.threads:
        torch.set_num_threads(args.threads)

    rep = Report(args.out)
    rep.text("# cfgdiff training benchmark")
    rep.text("")
    rep.text(f"Command: `{' '.join([Path(sys.executable).name, *(sys.argv if argv is None else argv)])}`  ")
    rep.text(machine_line(args.threads) + "  ")
    env_threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    rep.text(f"Environment threads: {env_threads or 'unset'}; torch threads here: {torch.get_num_threads()}.")
    rep.text("")
    t_start = time.perf_counter()
    for name, section in (("trainer", section_trainer), ("ddp", section_ddp), ("memory", section_memory),
                          ("chunks", section_chunks)):
        if name in sections:
            t0 = time.perf_counter()
            section(rep, args)
            rep.text(f"(section {name}: {time.perf_counter() - t0:.0f} s)")
            rep.text("")
    rep.finish(time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
