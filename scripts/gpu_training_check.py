"""One short GPU check of the training loop (issue 8): throughput of the 28×28 preset's U-Net (0.72M
parameters) under fp32, TF32, bf16 autocast, channels_last and torch.compile, peak memory, and a resume on
CUDA (generator state of a CUDA generator, in-memory and streaming loaders).

    PYTHONPATH=src python3 scripts/gpu_training_check.py [--steps 100] [--batch 256,1024] [--no-compile]

Synthetic data (uint8 [8192, 1, 28, 28], 10 classes): throughput does not depend on the pixel values.
Prints a Markdown table with the card's name.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from cfgdiff.data import Dataset
from cfgdiff.models.presets import preset_for
from cfgdiff.training import TrainConfig, diffusion_trainer, fit

DEVICE = "cuda"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def dataset(n: int = 8192) -> Dataset:
    g = torch.Generator().manual_seed(0)
    stored = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return Dataset("synthetic28", stored, torch.arange(n) % 10, 10, tuple(map(str, range(10))), 1.0, pixel_max=255,
                   source={"format": "synthetic"})


def config(batch: int, **kwargs) -> TrainConfig:
    preset = preset_for((1, 28, 28), "small")
    values = {**preset, "batch_size": batch, "device": DEVICE, "warmup_steps": 10, "hflip": False, **kwargs}
    return TrainConfig(data="synthetic28", **values)


def throughput(data: Dataset, batch: int, steps: int, **kwargs) -> tuple[float, float, float]:
    trainer = diffusion_trainer(config(batch, **kwargs), data)
    t0 = time.perf_counter()
    for _ in range(10):  # warm-up (and compilation)
        trainer.train_step()
    _sync()
    warm = time.perf_counter() - t0
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = trainer.train_step()
    _sync()
    seconds = time.perf_counter() - t0
    assert loss == loss, "non-finite loss"
    peak = torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else float("nan")
    return batch * steps / seconds, peak, warm


def resume_check(data: Dataset, loader: str) -> tuple[float, float]:
    """Max |Δweight| of 30 straight steps against (a second straight run, 20 steps + resume to 30): the first
    is the device's own run-to-run nondeterminism, the second what resuming adds."""
    with tempfile.TemporaryDirectory() as root:
        kwargs = dict(steps=30, checkpoint_every=10, log_every=10, loader=loader, workers=2 if loader == "streaming"
                      else 0)
        straight = fit(diffusion_trainer(config(64, **kwargs), data), f"{root}/a", handle_signals=False)
        again = fit(diffusion_trainer(config(64, **kwargs), data), f"{root}/c", handle_signals=False)
        fit(diffusion_trainer(config(64, **{**kwargs, "steps": 20}), data), f"{root}/b", handle_signals=False)
        resumed = fit(diffusion_trainer(config(64, **kwargs), data), f"{root}/b", resume=True, handle_signals=False)

        def gap(other) -> float:
            return max(float((a - b).abs().max()) for a, b in zip(straight.model.state_dict().values(),
                                                                  other.model.state_dict().values(), strict=True))

        return gap(again), gap(resumed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", default="256,1024")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the script)")
    parser.add_argument("--resume-only", action="store_true", help="only the resume checks")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms (set CUBLAS_WORKSPACE_CONFIG=:4096:8)")
    args = parser.parse_args()
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    global DEVICE
    DEVICE = args.device
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    data = dataset()
    modes = {
        "fp32 (no TF32)": dict(tf32=False),
        "fp32 + TF32": dict(),
        "bf16 autocast": dict(autocast=True),
        "bf16 + channels_last": dict(autocast=True, channels_last=True),
    }
    if not args.no_compile:
        modes["bf16 + torch.compile"] = dict(autocast=True, compile=True)
    if args.resume_only:
        modes, args.batch = {}, ""
    print("\n| mode | batch | images/s | peak MiB | warm-up s (10 steps) | card |\n|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batch.split(",") if b]:
        for mode, kwargs in modes.items():
            try:
                ips, mib, warm = throughput(data, batch, args.steps, **kwargs)
                print(f"| {mode} | {batch} | {ips:,.0f} | {mib:,.0f} | {warm:.1f} | {name} |", flush=True)
            except Exception as err:  # noqa: BLE001 - report and go on
                print(f"| {mode} | {batch} | failed: {type(err).__name__}: {str(err)[:120]} | | | {name} |", flush=True)
    for loader in ("memory", "streaming"):
        rerun, resumed = resume_check(data, loader)
        print(f"{DEVICE}, {loader} loader, 30 steps: max |Δweight| straight vs straight again = {rerun:.3g}, "
              f"straight vs 20 + resumed 10 = {resumed:.3g}", flush=True)


if __name__ == "__main__":
    main()
