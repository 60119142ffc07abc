"""The GPU speed check (prepared to run on a CUDA machine, alone; under 8 minutes in all):

    timeout 480 .venv/bin/python benchmarks/gpu_speed.py                      # writes reports/gpu_speed_<card>.md
    .venv/bin/python benchmarks/gpu_speed.py --device cpu --quick --out /tmp/gpu_speed.md   # seconds, any machine

On the 32×32 ``base`` preset network (``cfgdiff.models.presets``, random weights: speed does not depend on them):

1. the card: ``nvidia-smi`` (name, memory, driver) and ``torch.cuda.get_device_name``; the matmul peak (4096²)
   in fp32, TF32 and bf16, so every figure below is also a share of the limit;
2. guided sampling, images/s at chunks of 256 and 1024 (a guided call of 2B rows; DDIM, ``--steps``) in fp32,
   bf16 autocast and bf16 + ``torch.compile`` (the first chunk, and with it the compilation, untimed);
3. cfgdiff's DDIM against diffusers' own ``DDIMPipeline`` on one class-conditional ``UNet2DModel`` (wrapped by
   ``cfgdiff.adapters.diffusers.DiffusersEpsFn``), conditional and unguided on both sides (``DDIMPipeline``
   has no guidance), same batch and steps, fp32 and bf16 autocast; skipped without diffusers;
4. training images/s of the same network (Algorithm 1's loss, forward + backward + AdamW) at batches 128 and 512,
   fp32, bf16, bf16 + compile, with GFLOP/s as a share of the peak.

Every section checks the time left (``--time-limit``, default 420 s) and skips what would overrun, saying so.
Writes ``--out`` (default ``reports/gpu_speed_<card>.md``, the card named in the file name and the first line) and
the figures as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from peak_share import NUM_CLASSES, count_flops, images_per_second, peak_gflops, training_row  # beside this script

from cfgdiff.models import build_model
from cfgdiff.models.presets import preset_for
from cfgdiff.runtime.precision import NetworkForm, time_call

SHAPE = (3, 32, 32)
FP32, BF16 = NetworkForm("fp32"), NetworkForm("bf16")


def card(device: str) -> dict[str, Any]:
    """What the device is: nvidia-smi's line and torch's name (a CPU: its model)."""
    if torch.device(device).type != "cuda":
        from cfgdiff.runtime.precision import cpu_info

        return {"name": cpu_info()[0], "nvidia_smi": None}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        smi = None
    return {"name": torch.cuda.get_device_name(device), "nvidia_smi": smi,
            "bf16_supported": torch.cuda.is_bf16_supported(), "capability": list(torch.cuda.get_device_capability())}


class Clock:
    """The time left of ``limit`` seconds; ``fits(seconds)`` says whether a section of that estimate fits."""

    def __init__(self, limit: float) -> None:
        self.t0, self.limit = time.perf_counter(), limit
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.t0)

    def fits(self, what: str, seconds: float) -> bool:
        if self.left() >= seconds:
            return True
        self.skipped.append(f"{what} (needs ~{seconds:.0f} s, {max(0.0, self.left()):.0f} s left)")
        return False


class LabelledUNet(torch.nn.Module):
    """A class-conditional UNet2DModel with its class labels fixed, for ``DDIMPipeline`` (which passes none)."""

    def __init__(self, unet: torch.nn.Module, labels: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.labels = unet, labels
        self.config = unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def forward(self, sample, timestep, *args, **kwargs):
        return self.unet(sample, timestep, class_labels=self.labels[:sample.shape[0]], **kwargs)


def diffusers_section(device: str, batch: int, steps: int, clock: Clock) -> list[dict[str, Any]]:
    """cfgdiff's DDIM and diffusers' DDIMPipeline on the same UNet2DModel: images/s, fp32 and bf16."""
    try:
        import diffusers
    except ImportError:
        clock.skipped.append("cfgdiff against DDIMPipeline (diffusers is not installed)")
        return []
    from cfgdiff.adapters.diffusers import DiffusersEpsFn
    from cfgdiff.sampling.pipeline import GuidedRun

    quick = batch <= 8
    channels = (32, 64) if quick else (128, 256, 256, 256)
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=SHAPE[1], in_channels=SHAPE[0], out_channels=SHAPE[0],
                                 layers_per_block=1 if quick else 2, block_out_channels=channels,
                                 down_block_types=("DownBlock2D",) * len(channels),
                                 up_block_types=("UpBlock2D",) * len(channels), num_class_embeds=NUM_CLASSES + 1,
                                 norm_num_groups=8 if quick else 32).to(device).eval()
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                        set_alpha_to_one=True)
    eps_fn = DiffusersEpsFn(unet, scheduler.alphas_cumprod, null_label=NUM_CLASSES)
    labels = torch.arange(batch, device=device) % NUM_CLASSES
    pipeline = diffusers.DDIMPipeline(unet=LabelledUNet(unet, labels), scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    rows = []
    for form in (FP32, BF16):
        if not clock.fits(f"DDIMPipeline vs cfgdiff, {form.name}", 30):
            break
        context = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=form.bf16)

        def run_diffusers(context=context) -> None:
            with torch.no_grad(), context:
                pipeline(batch_size=batch, num_inference_steps=steps, eta=0.0, output_type="np",
                         generator=torch.Generator(device=device).manual_seed(0))

        run = GuidedRun(eps_fn, sampler="ddim", steps=steps, batch_size=batch, device=device,
                        precision=form.precision, sampler_options={"logsnr_min": eps_fn.logsnr_min,
                                                                   "logsnr_max": eps_fn.logsnr_max})
        seconds_diffusers = time_call(run_diffusers, device=device, warmup=1, repeats=2, budget_s=10)
        seconds_cfgdiff = time_call(lambda run=run: run.samples(labels.cpu(), 0.0, seed=0), device=device,
                                    warmup=1, repeats=2, budget_s=10)
        rows.append({"form": form.name, "batch": batch, "steps": steps,
                     "diffusers_images_per_s": batch / seconds_diffusers,
                     "cfgdiff_images_per_s": batch / seconds_cfgdiff,
                     "cfgdiff_over_diffusers": seconds_diffusers / seconds_cfgdiff})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a check of the script")
    parser.add_argument("--quick", action="store_true", help="tiny batches and steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=None, help="Markdown path (default reports/gpu_speed_<card>.md)")
    parser.add_argument("--steps", type=int, default=32, help="DDIM steps of the sampling runs (default 32)")
    parser.add_argument("--time-limit", type=float, default=420.0, help="seconds for everything (default 420)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args()
    device, quick, clock = args.device, args.quick, Clock(args.time_limit)
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; the TF32 peak is measured apart
        torch.backends.cudnn.allow_tf32 = False
    info = card(device)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", info["name"]).strip("_").lower() or "device"
    out = args.out or Path("reports") / f"gpu_speed_{slug}.md"
    steps = 2 if quick else args.steps
    chunks = (2,) if quick else (256, 1024)
    batches = (4,) if quick else (128, 512)
    compile_ok = not args.no_compile and not quick
    n = 256 if torch.device(device).type == "cpu" else 512
    peak_n = 256 if quick else 4096

    results: dict[str, Any] = {"card": info, "device": device, "quick": quick, "torch": torch.__version__}
    peak = {"fp32": peak_gflops(torch.float32, peak_n, repeats=3, device=device),
            "bf16": peak_gflops(torch.bfloat16, peak_n, repeats=3, device=device)}
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        peak["tf32"] = peak_gflops(torch.float32, peak_n, repeats=3, device=device)
        torch.backends.cuda.matmul.allow_tf32 = False
    results["peak_gflops"] = peak
    preset = preset_for(SHAPE, "base")
    config = {**preset["model"], "image_shape": list(SHAPE), "num_classes": NUM_CLASSES}
    torch.manual_seed(0)
    net = build_model(config).to(device).eval()
    forms = [(FP32, False), (BF16, False)] + ([(BF16, True)] if compile_ok else [])

    sampling = []
    for chunk in chunks:
        rows = 2 * chunk
        with torch.no_grad():  # FLOPs of one guided call of 2·chunk rows
            flops = count_flops(lambda rows=rows: net(torch.zeros((rows, *SHAPE), device=device),
                                                      torch.zeros(rows, device=device),
                                                      torch.zeros(rows, dtype=torch.long, device=device)))
        for form, compiled in forms:
            label = f"sampling, chunk {chunk}, {form.name}{' + compile' if compiled else ''}"
            if not clock.fits(label, 90 if compiled else 20):
                continue
            ips = images_per_second(net, SHAPE, chunk, steps=steps, w=3.0, form=form, n=chunk if quick else n * 2,
                                    device=device, compiled=compiled)
            gflops = ips / chunk * steps * flops / 1e9  # steps guided calls of 2·chunk rows per chunk of images
            sampling.append({"chunk": chunk, "form": form.name, "compiled": compiled, "images_per_s": ips,
                             "gflops": gflops, "share_of_peak": gflops / peak[form.precision]})
    results["guided_sampling"] = sampling
    results["cfgdiff_vs_ddimpipeline"] = diffusers_section(device, 4 if quick else 256, steps, clock)

    training = []
    for batch in batches:
        for form, compiled in forms:
            label = f"training, batch {batch}, {form.name}{' + compile' if compiled else ''}"
            if not clock.fits(label, 120 if compiled else 20):
                continue
            row = training_row(config, SHAPE, batch, form, compiled=compiled, repeats=1 if quick else 10,
                               device=device)
            training.append({"batch": batch, "form": form.name, "compiled": compiled,
                             "images_per_s": batch / row["seconds"], "gflops": row["gflops"],
                             "share_of_peak": row["gflops"] / peak[form.precision]})
    results["training"] = training
    results["skipped"] = clock.skipped
    results["seconds"] = args.time_limit - clock.left()

    lines = [f"# GPU speed on {info['name']}", "",
             f"- card: {info.get('nvidia_smi') or info['name']}; torch {torch.__version__}; device {device}"
             + ("; --quick (tiny sizes: the figures mean nothing)" if quick else ""),
             "- peak (square matrix product): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()),
             f"- network: the 32×32 base preset ({sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters), "
             f"DDIM {steps} steps, w = 3 (a guided call of 2B rows)", "",
             "## Guided sampling", "", "| chunk | form | compiled | images/s | GFLOP/s | share of peak |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['chunk']} | {r['form']} | {r['compiled']} | {r['images_per_s']:.1f} | {r['gflops']:.0f} | "
              f"{100 * r['share_of_peak']:.1f} % |" for r in sampling]
    lines += ["", "## cfgdiff's DDIM against diffusers' DDIMPipeline (same UNet2DModel, conditional, unguided)", "",
              "| form | batch | steps | DDIMPipeline images/s | cfgdiff images/s | cfgdiff / DDIMPipeline |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['form']} | {r['batch']} | {r['steps']} | {r['diffusers_images_per_s']:.1f} | "
              f"{r['cfgdiff_images_per_s']:.1f} | ×{r['cfgdiff_over_diffusers']:.2f} |"
              for r in results["cfgdiff_vs_ddimpipeline"]]
    lines += ["", "## Training (loss forward + backward + AdamW)", "",
              "| batch | form | compiled | images/s | GFLOP/s | share of peak |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['form']} | {r['compiled']} | {r['images_per_s']:.1f} | {r['gflops']:.0f} | "
              f"{100 * r['share_of_peak']:.1f} % |" for r in training]
    lines += ["", "Skipped to stay within the time limit: " + ("; ".join(clock.skipped) or "nothing") + ".",
              f"Total time: {results['seconds']:.0f} s."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
