"""Interop benchmark (run by hand, not a test): cfgdiff's samplers and guidance on diffusers models.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/interop.py --threads 2                 # full: reports/interop.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interop.py --quick --out /tmp/interop.md   # smoke run, ~2 min
    python benchmarks/interop.py --sections gpu --gpu-out reports/interop_gpu.md          # on a CUDA machine

Needs the optional extra diffusers (``pip install 'cfgdiff[diffusers]'``). Sections (``--sections``):

* ``train``: builds two diffusers models for the 8×8 digits (1×8×8, 10 classes + a null class 10) and trains each
  for ``--train-seconds`` here with diffusers' own recipe: t ~ U{0 .. 999}, z_t = ``DDPMScheduler.add_noise(x, ε,
  t)`` (linear betas 1e-4 .. 0.02), MSE against the scheduler's target (ε for the DiT, v = ``get_velocity`` for the
  UNet), labels replaced by the null class with p_uncond = 0.1 (done here; the DiT runs in eval mode so that its
  own label-embedding dropout stays off), AdamW, EMA 0.999. The DiT (``DiTTransformer2DModel``, pixel space,
  patch 2, learned-variance output, ε-prediction) and the UNet (``UNet2DModel`` with ``num_class_embeds=11``,
  v-prediction) are saved as pipeline folders under ``--work-dir`` and loaded back with
  ``cfgdiff.adapters.diffusers.load_diffusers``, the path ``cfgdiff sample --diffusers DIR`` takes;
* ``equality``: (a) the adapter's ε against each model's own output at all 1000 timesteps (ε half of the DiT's
  learned-variance output; for the v-prediction UNet, ε as diffusers' DDIM step forms it,
  sqrt(ᾱ_t) v + sqrt(1 - ᾱ_t) z), and the adapter's overhead per call;
* ``loops``: (b) diffusers' own DDIM and DPM-Solver++(2M) scheduler loops with guidance scale s (DiTPipeline's
  arithmetic: one call on [z, z] with [c, ∅], ε_u + s (ε_c - ε_u), ``scheduler.step``) against cfgdiff's
  ``sample_ddim`` / ``sample_dpmpp_2m`` at w = s - 1 on the scheduler's own timesteps mapped to log-SNR
  (``logsnr_grid_from_timesteps``), same model, initial noise and steps: largest difference of the images and
  images per second of each; plus diffusers' ``DiTPipeline.__call__`` on a latent DiT with a VAE (random weights)
  against cfgdiff's latent path (sampler + ``decode``);
* ``guidance``: (c) what cfgdiff adds on these models, FID / IS in digits-classifier features
  (``cfgdiff.evaluation.features``, ``cfgdiff.evaluation.metrics``): DPM-Solver++(2M) with plain CFG against the
  guidance interval
  (σ in (σ_lo, σ_hi], Kynkäänniemi et al. 2024) at the same w, with network evaluations per image, and one
  guidance variant (rescaled CFG, Lin et al. 2023, φ = 0.7);
* ``gpu`` (only with CUDA): a DiT-XL/2-sized latent DiT with an SD-sized VAE (random weights, 256×256 images),
  guided sampling images/s of ``DiTPipeline`` and of cfgdiff (fp32 and bf16 autocast), and the images' difference.
  Its table is also written to ``--gpu-out``; a CPU-only run includes that file in its report when it exists.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import argparse
import copy
import json
import math
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cfgdiff.adapters.diffusers import DiffusersEpsFn, DiffusersModel, import_diffusers, load_diffusers
from cfgdiff.adapters.discrete import logsnr_grid_from_timesteps
from cfgdiff.guidance import cfg, guidance_interval_sigma
from cfgdiff.sampling.generate import prepare_eps_fn
from cfgdiff.sampling.pipeline import GuidedRun
from cfgdiff.sampling.solvers import sample_ddim, sample_dpmpp_2m

ALL_SECTIONS = ("train", "equality", "loops", "guidance", "gpu")
NUM_CLASSES = 10  # digits
NULL = NUM_CLASSES  # both models' null class
P_UNCOND = 0.1
SCHEDULERS = {"ddim": ("DDIMScheduler", sample_ddim), "dpmpp_2m": ("DPMSolverMultistepScheduler", sample_dpmpp_2m)}

diffusers = import_diffusers()


# -- models and training ---------------------------------------------------------------------------------------


def ddpm_scheduler(prediction_type: str):
    """DDPM's linear betas 1e-4 .. 0.02 over T = 1000 (Ho et al. 2020; DiT's schedule too)."""
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   prediction_type=prediction_type, clip_sample=False)


def build_dit(layers: int, heads: int, head_dim: int) -> torch.nn.Module:
    """Pixel-space DiT for 1×8×8: 16 tokens of 2×2 patches, learned-variance output (2 channels)."""
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=1, out_channels=2, num_layers=layers,
        sample_size=8, patch_size=2, num_embeds_ada_norm=NUM_CLASSES)


def build_unet(width: int) -> torch.nn.Module:
    """Class-conditional UNet2DModel for 1×8×8 with 11 class embeddings (10 digits + the null class 10)."""
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=NUM_CLASSES + 1)


def call_model(model, z, t, labels):
    """The raw diffusers forward (DiT takes ``timestep=``, the UNet takes it positionally)."""
    if isinstance(model, diffusers.DiTTransformer2DModel):
        return model(z, timestep=t, class_labels=labels, return_dict=False)[0]
    return model(z, t, class_labels=labels, return_dict=False)[0]


def train(model, scheduler, *, seconds: float, batch: int, lr: float, seed: int) -> dict:
    """diffusers' training recipe with label dropout to the null class (see the module docstring); EMA model."""
    from cfgdiff.data import load_dataset

    data = load_dataset("digits", "train")
    x_all, y_all = data.x.to(torch.float32), data.labels.to(torch.long)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.eval()  # DiT's LabelEmbedding drops labels itself in training mode; there is no other dropout
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    target_type = scheduler.config.prediction_type
    channels = int(model.config.in_channels)
    losses, step, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(0, x_all.shape[0], (batch,), generator=g)
        x, labels = x_all[idx], y_all[idx].clone()
        labels[torch.rand(batch, generator=g) < P_UNCOND] = NULL  # Algorithm 1: label dropout
        eps = torch.randn(x.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=g)
        z = scheduler.add_noise(x, eps, t)
        target = eps if target_type == "epsilon" else scheduler.get_velocity(x, eps, t)
        out = call_model(model, z, t, labels)[:, :channels]
        loss = torch.nn.functional.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        warm = min(1.0, (step + 1) / 100)
        for group in opt.param_groups:
            group["lr"] = lr * warm
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        step += 1
    seconds_run = time.perf_counter() - t0
    return {"model": ema, "steps": step, "seconds": seconds_run, "loss": float(np.mean(losses[-200:])),
            "params": sum(p.numel() for p in model.parameters())}


def save_pixel_dit(model, scheduler, path: Path) -> None:
    """A DiT pipeline folder without a VAE (pixel space): model_index.json + transformer/ + scheduler/."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path / "transformer")
    diffusers.DDIMScheduler.from_config(scheduler.config).save_pretrained(path / "scheduler")
    index = {"_class_name": "DiTPipeline", "_diffusers_version": diffusers.__version__,
             "transformer": ["diffusers", "DiTTransformer2DModel"], "scheduler": ["diffusers", "DDIMScheduler"],
             "vae": [None, None], "id2label": {str(k): str(k) for k in range(NUM_CLASSES)}}
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def save_unet(model, scheduler, path: Path) -> None:
    diffusers.DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(path)


# -- the two sampling loops --------------------------------------------------------------------------------------


@torch.inference_mode()
def diffusers_loop(model, scheduler, z0: torch.Tensor, labels: torch.Tensor, s: float, steps: int) -> torch.Tensor:
    """DiTPipeline's loop: one call on [z, z] with [c, ∅] when s > 1, ε_u + s (ε_c - ε_u), scheduler.step."""
    channels = z0.shape[1]
    scheduler.set_timesteps(steps)
    latents = z0.clone()
    batch = labels.shape[0]
    labels_in = torch.cat([labels, torch.full_like(labels, NULL)]) if s > 1 else labels
    for t in scheduler.timesteps:
        inp = torch.cat([latents, latents]) if s > 1 else latents
        inp = scheduler.scale_model_input(inp, t)
        out = call_model(model, inp, t.expand(inp.shape[0]).to(inp.device), labels_in)[:, :channels]
        if s > 1:
            cond, uncond = out.split(batch)
            out = uncond + s * (cond - uncond)
        latents = scheduler.step(out, t, latents).prev_sample
    return latents


def cfgdiff_loop(eps_fn, scheduler, sampler, z0, labels, s: float, steps: int) -> torch.Tensor:
    """cfgdiff's sampler at w = s - 1 on the scheduler's timesteps as a log-SNR grid, from the same z0."""
    scheduler.set_timesteps(steps)
    grid = logsnr_grid_from_timesteps(eps_fn.schedule, scheduler.timesteps.cpu())
    return sampler(cfg(eps_fn, s - 1.0), tuple(z0.shape), labels, grid=grid, z=z0, device=z0.device)


def best_time(fn, repeats: int, *fn_args) -> tuple[float, torch.Tensor]:
    """The best wall time of ``repeats`` calls fn(*fn_args) and the last result."""
    best, out = math.inf, None
    for _ in range(max(1, repeats)):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*fn_args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _repeat_calls(fn, *fn_args, times: int = 20) -> None:
    """``times`` calls of fn(*fn_args) (per-call timings of small calls)."""
    with torch.inference_mode():
        for _ in range(times):
            fn(*fn_args)


# -- sections -----------------------------------------------------------------------------------------------------


def section_train(args, report: list[str]) -> None:
    work = Path(args.work_dir)
    specs = [("dit", build_dit(args.dit_layers, args.dit_heads, args.dit_head_dim), "epsilon", args.dit_lr),
             ("unet", build_unet(args.unet_width), "v_prediction", args.unet_lr)]
    rows = []
    for name, model, prediction_type, lr in specs:
        scheduler = ddpm_scheduler(prediction_type)
        result = train(model, scheduler, seconds=args.train_seconds, batch=args.batch_size, lr=lr, seed=args.seed)
        (save_pixel_dit if name == "dit" else save_unet)(result["model"], scheduler, work / name)
        rows.append(f"| {name} | {type(model).__name__} | {result['params'] / 1e6:.2f}M | {prediction_type} | "
                    f"{result['steps']} | {args.batch_size} | {lr:g} | {result['seconds']:.0f} | "
                    f"{result['loss']:.4f} |")
        print(rows[-1], flush=True)
    report += ["## Models trained here", "",
               f"Digits (1437 training images, 1×8×8), diffusers' recipe with DDPMScheduler.add_noise (linear betas, "
               f"T = 1000), p_uncond = {P_UNCOND} to the null class 10, AdamW, EMA 0.999; saved under "
               f"`{args.work_dir}` and loaded with `load_diffusers` (the `--diffusers DIR` path).", "",
               "| model | class | parameters | prediction | steps | batch | lr | seconds | final loss (last 200) |",
               "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def load_models(args) -> dict[str, DiffusersModel]:
    work = Path(args.work_dir)
    models = {}
    for name in ("dit", "unet"):
        if not (work / name / "model_index.json").is_file():
            raise SystemExit(f"no trained {name} under {work}: run the train section first")
        models[name] = load_diffusers(work / name, null_label=NULL)
    return models


def section_equality(args, report: list[str], models: dict[str, DiffusersModel]) -> None:
    rows = []
    g = torch.Generator().manual_seed(args.seed)
    for name, loaded in models.items():
        e = loaded.eps_fn
        abar = loaded.scheduler.alphas_cumprod  # float32, as diffusers' steps use it
        worst, worst_rel = 0.0, 0.0
        timesteps = torch.arange(0, 1000, args.equality_stride)
        with torch.inference_mode():
            for t in timesteps:
                z = torch.randn((args.equality_batch, *e.data_shape), generator=g)
                labels = torch.randint(0, NUM_CLASSES + 1, (args.equality_batch,), generator=g)
                out = call_model(e.model, z, t.expand(z.shape[0]), labels)[:, : e.in_channels]
                # DDIMScheduler.step's pred_epsilon for v-prediction
                own = abar[t] ** 0.5 * out + (1 - abar[t]) ** 0.5 * z if e.prediction_type == "v_prediction" else out
                ours = e(z, e.schedule.logsnrs[t].expand(z.shape[0]), labels)
                diff = (ours - own).abs().max().item()
                worst = max(worst, diff)
                worst_rel = max(worst_rel, diff / own.pow(2).mean().sqrt().item())
            z = torch.randn((args.batch_size, *e.data_shape), generator=g)
            labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=g)
            t = torch.full((args.batch_size,), 500)
            lam = e.schedule.logsnrs[t].to(torch.float32)
            direct, _ = best_time(_repeat_calls, args.repeats, partial(call_model, e.model), z, t, labels)
            adapted, _ = best_time(_repeat_calls, args.repeats, e, z, lam, labels)
        rows.append(f"| {name} | {e.prediction_type} | {len(timesteps)} × {args.equality_batch} | {worst:.2e} | "
                    f"{worst_rel:.2e} | {direct / 20 * 1e3:.2f} | {adapted / 20 * 1e3:.2f} |")
        print(rows[-1], flush=True)
    report += ["## (a) The adapter's ε against the model's own output", "",
               "At integer timesteps t (λ = λ_t), random z and labels (null included): the adapter's ε̂ against the "
               "ε half of the DiT's learned-variance output, and against sqrt(ᾱ_t) v + sqrt(1 - ᾱ_t) z for the "
               "v-prediction UNet (diffusers' DDIM step). Timing: one call of the batch at t = 500, best of "
               f"{args.repeats}.", "",
               "| model | prediction | timesteps × rows | max abs diff | max diff / rms ε | ms / call, model | "
               "ms / call, adapter |", "|---|---|---|---|---|---|---|", *rows, ""]


def section_loops(args, report: list[str], models: dict[str, DiffusersModel]) -> None:
    rows = []
    worst = 0.0
    for name, loaded in models.items():
        e = loaded.eps_fn
        for sched_key, (sched_name, sampler) in SCHEDULERS.items():
            for steps in args.loop_steps:
                for s in args.scales:
                    scheduler = getattr(diffusers, sched_name).from_config(loaded.scheduler.config)
                    if sched_name == "DDIMScheduler":
                        scheduler = diffusers.DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=True,
                                                                        clip_sample=False)
                    g = torch.Generator().manual_seed(args.seed)
                    z0 = torch.randn((args.loop_n, *e.data_shape), generator=g)
                    labels = torch.arange(args.loop_n) % NUM_CLASSES
                    t_d, x_d = best_time(diffusers_loop, args.repeats, e.model, scheduler, z0, labels, s, steps)
                    t_c, x_c = best_time(cfgdiff_loop, args.repeats, e, scheduler, sampler, z0, labels, s, steps)
                    diff = (x_d - x_c).abs().max().item()
                    worst = max(worst, diff)
                    rows.append(f"| {name} | {sched_key} | {steps} | {s:g} | {s - 1:g} | {diff:.2e} | "
                                f"{(x_d - x_c).abs().mean().item():.2e} | {args.loop_n / t_d:.0f} | "
                                f"{args.loop_n / t_c:.0f} | {t_d / t_c:.2f} |")
                    print(rows[-1], flush=True)
    latent_rows = latent_pipeline_rows(args)
    report += ["## (b) diffusers' own loops against cfgdiff's samplers", "",
               f"{args.loop_n} images per row (labels i mod 10), one batch, the same initial noise; diffusers: "
               "DDIMScheduler (set_alpha_to_one, no clipping) or DPMSolverMultistepScheduler (DPM-Solver++ 2M, "
               "its defaults: lower_order_final, final sigma 0) stepping DiTPipeline's guided arithmetic; cfgdiff: "
               "sample_ddim / sample_dpmpp_2m at w = s - 1 on the scheduler's timesteps as a log-SNR grid, no "
               f"clipping. Images in [-1, 1]. Images/s: best of {args.repeats}, {torch.get_num_threads()} torch "
               "thread(s).", "",
               "| model | sampler | steps | diffusers s | cfgdiff w | max abs diff | mean abs diff | diffusers img/s | "
               "cfgdiff img/s | cfgdiff ÷ diffusers |", "|---|---|---|---|---|---|---|---|---|---|", *rows, "",
               f"Largest difference over all rows: **{worst:.1e}** (tolerance stated: 1e-3).", "", *latent_rows]


def latent_dit_pipeline(layers: int, heads: int, head_dim: int, latent: int, vae_channels: tuple[int, ...],
                        seed: int):
    """A DiT pipeline in DiT-XL/2's layout (latent DiT + AutoencoderKL, null class 1000) with random weights."""
    torch.manual_seed(seed)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=8, num_layers=layers,
        sample_size=latent, patch_size=2, num_embeds_ada_norm=1000)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), layers_per_block=2,
        norm_num_groups=min(32, vae_channels[0]), sample_size=latent * 2 ** (len(vae_channels) - 1))
    scheduler = diffusers.DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False,
                                        set_alpha_to_one=True)
    return diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)


def latent_comparison(pipe, base_config: dict, *, n: int, steps: int, s: float, sched_name: str, sampler,
                      device: str, autocast: bool, repeats: int, seed: int) -> dict:
    """DiTPipeline.__call__ against cfgdiff's sampler + decode on the same pipeline objects; images in [0, 1]."""
    pipe.scheduler = getattr(diffusers, sched_name).from_config(base_config)  # from the DDIM config each time
    pipe.set_progress_bar_config(disable=True)
    labels = [i % 1000 for i in range(0, 7 * n, 7)]
    e = DiffusersEpsFn(pipe.transformer, pipe.scheduler.alphas_cumprod, prediction_type="epsilon", x_bound=None)
    loaded = DiffusersModel(e, pipe.scheduler, pipe.vae)
    network = prepare_eps_fn(e, device=device, autocast=autocast)
    context = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)

    def theirs():
        with context:
            return pipe(class_labels=labels, guidance_scale=s, num_inference_steps=steps, output_type="pt",
                        generator=torch.Generator(device).manual_seed(seed)).images.float()

    def ours():
        z0 = torch.randn((n, 4, *e.data_shape[1:]), generator=torch.Generator(device).manual_seed(seed),
                         device=device)
        pipe.scheduler.set_timesteps(steps)
        grid = logsnr_grid_from_timesteps(e.schedule, pipe.scheduler.timesteps.cpu())
        z = sampler(cfg(network, s - 1.0), tuple(z0.shape), torch.tensor(labels, device=device), grid=grid, z=z0,
                    device=device)
        return (loaded.decode(z, autocast=autocast) / 2 + 0.5).clamp(0, 1)

    t_d, x_d = best_time(theirs, repeats)
    t_c, x_c = best_time(ours, repeats)
    return {"diff": (x_d - x_c).abs().max().item(), "mean_diff": (x_d - x_c).abs().mean().item(),
            "theirs": n / t_d, "ours": n / t_c}


def latent_pipeline_rows(args) -> list[str]:
    pipe = latent_dit_pipeline(2, 4, 16, 4, (16, 16), args.seed)
    base_config = dict(pipe.scheduler.config)
    rows = []
    for sched_key, (sched_name, sampler) in SCHEDULERS.items():
        r = latent_comparison(pipe, base_config, n=args.loop_n, steps=args.loop_steps[0], s=args.scales[-1],
                              sched_name=sched_name, sampler=sampler, device="cpu", autocast=False,
                              repeats=args.repeats, seed=args.seed)
        rows.append(f"| {sched_key} | {args.loop_steps[0]} | {args.scales[-1]:g} | {r['diff']:.2e} | "
                    f"{r['theirs']:.0f} | {r['ours']:.0f} |")
        print(rows[-1], flush=True)
    return ["Latent path: `DiTPipeline.__call__` itself (DiT layout, null class 1000, 4×4×4 latents, "
            "AutoencoderKL decoding to 3×8×8, random weights) against cfgdiff's sampler on the adapter plus "
            "`DiffusersModel.decode`, images in [0, 1], the pipeline's own noise draw:", "",
            "| sampler | steps | s | max abs diff | DiTPipeline img/s | cfgdiff img/s |", "|---|---|---|---|---|---|",
            *rows, ""]


class _Features:
    """Digits-classifier features of real and generated digits, FID with a bootstrap spread, IS."""

    def __init__(self, seed: int) -> None:
        from cfgdiff.data import load_dataset
        from cfgdiff.evaluation.features import feature_extractor_for

        self.extractor = feature_extractor_for("digits")
        train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
        self.ref_feats = self.features(train.x)
        self.ref = (self.ref_feats.mean(0), np.cov(self.ref_feats, rowvar=False))
        self.floor = self.fid(self.features(test.x))
        self.rng = np.random.default_rng(seed)

    def features(self, x: torch.Tensor) -> np.ndarray:
        return self.extractor(x.to(torch.float32))[0].double().numpy()

    def fid(self, feats: np.ndarray) -> float:
        from cfgdiff.evaluation.metrics import frechet_distance

        return frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), *self.ref)

    def score(self, x: torch.Tensor, bootstrap: int = 20) -> tuple[float, float, float]:
        from cfgdiff.evaluation.metrics import inception_score

        feats, probs = self.extractor(x.to(torch.float32))
        feats = feats.double().numpy()
        boots = [self.fid(feats[self.rng.integers(0, len(feats), len(feats))]) for _ in range(bootstrap)]
        return self.fid(feats), float(np.std(boots)), inception_score(probs.double().numpy())[0]


def section_guidance(args, report: list[str], models: dict[str, DiffusersModel]) -> None:
    scorer = _Features(args.seed)
    labels = torch.arange(args.fid_n) % NUM_CLASSES
    lo, hi = args.interval
    try:
        from cfgdiff.guidance import rescaled_cfg
    except ImportError:
        rescaled_cfg = None
    methods = [("CFG", lambda e, w: cfg(e, w)),
               (f"CFG + interval ({lo:g}, {hi:g}]", lambda e, w: cfg(e, guidance_interval_sigma(w, sigma_lo=lo,
                                                                                                sigma_hi=hi)))]
    if rescaled_cfg is not None:
        methods.append(("rescaled CFG φ = 0.7", lambda e, w: rescaled_cfg(e, w, phi=0.7)))
    rows, summary = [], []
    for name, loaded in models.items():
        e = loaded.eps_fn
        results = {}
        for method, guide in methods:
            for w in args.guidance_w:
                if w == 0 and method != "CFG":
                    continue
                run = GuidedRun.from_options(e, sampler="dpmpp_2m", steps=args.guidance_steps, method=method,
                                             guide=guide, batch_size=256, data_shape=e.data_shape, clip_x=True,
                                             logsnr_min=e.logsnr_min, logsnr_max=e.logsnr_max)
                t0 = time.perf_counter()
                x = run.samples(labels, w, seed=args.seed)
                seconds = time.perf_counter() - t0
                fid, spread, is_ = scorer.score(x)
                nfe = run.denoiser_rows() / args.fid_n
                results[(method, w)] = (fid, nfe)
                rows.append(f"| {name} | {method} | {w:g} | {fid:.3f} ± {spread:.3f} | {is_:.2f} | {nfe:g} | "
                            f"{seconds / args.fid_n * 1e3:.2f} |")
                print(rows[-1], flush=True)
        for w in args.guidance_w:
            if w == 0:
                continue
            (f_full, n_full), (f_int, n_int) = results[("CFG", w)], results[(methods[1][0], w)]
            summary.append(f"- {name}, w = {w:g}: the interval gives FID {f_int:.3f} with {n_int:g} network "
                           f"evaluations per image, plain CFG {f_full:.3f} with {n_full:g} "
                           f"({100 * (1 - n_int / n_full):.0f} % fewer evaluations).")
    report += ["## (c) What cfgdiff adds on these models", "",
               f"FID (digits-classifier features, against the training split) with a bootstrap spread over samples, "
               f"IS (digits classifier); {args.fid_n} class-balanced samples per row, DPM-Solver++(2M) "
               f"{args.guidance_steps} steps on the cosine grid clipped to the model's trained log-SNR range, x̂ "
               f"clipped to [-1, 1], seed {args.seed} (the same noise in every row). FID floor (test split vs "
               f"training split): {scorer.floor:.3f}. NFE: network evaluations per image (a guided step counts 2). "
               "`DiTPipeline.__call__` takes a `guidance_scale` only: no guidance interval, no rescale, and diffusers "
               "has no ancestral sampler with the paper's v-interpolated variance.", "",
               "| model | guidance | w | FID ± spread | IS | NFE / image | ms / image |",
               "|---|---|---|---|---|---|---|",
               *rows, "", *summary, ""]
    if rescaled_cfg is None:
        report += ["(rescaled CFG row skipped: `cfgdiff.guidance.rescaled_cfg` not importable in this tree)", ""]


def section_gpu(args, report: list[str]) -> None:
    if not torch.cuda.is_available():
        gpu_file = Path(args.gpu_out)
        if gpu_file.is_file():
            report += [gpu_file.read_text().strip(), ""]
        else:
            report += ["## GPU", "", "No CUDA device in this run and no earlier GPU table: DiT guided sampling on a "
                       "GPU was not timed.", ""]
        return
    device = "cuda"
    lines = []
    size = args.gpu_size
    if size == "xl":  # DiT-XL/2 at 256×256: 28 layers, hidden 1152 (16 × 72), 32×32×4 latents; SD-sized VAE
        spec = dict(layers=28, heads=16, head_dim=72, latent=32, vae_channels=(128, 256, 512, 512))
    else:
        spec = dict(layers=4, heads=6, head_dim=64, latent=16, vae_channels=(32, 64))
    t0 = time.perf_counter()
    pipe = latent_dit_pipeline(seed=args.seed, **spec).to(device)
    base_config = dict(pipe.scheduler.config)
    build = time.perf_counter() - t0
    params = sum(p.numel() for p in pipe.transformer.parameters()) / 1e6
    rows = []
    for autocast in (False, True):
        for sched_key, (sched_name, sampler) in SCHEDULERS.items():
            r = latent_comparison(pipe, base_config, n=args.gpu_n, steps=args.gpu_steps, s=args.gpu_scale,
                                  sched_name=sched_name, sampler=sampler, device=device, autocast=autocast,
                                  repeats=args.repeats, seed=args.seed)
            rows.append(f"| {'bf16 autocast' if autocast else 'fp32'} | {sched_key} | {args.gpu_steps} | "
                        f"{args.gpu_scale:g} | {r['diff']:.2e} | {r['mean_diff']:.2e} | {r['theirs']:.1f} | "
                        f"{r['ours']:.1f} | {r['ours'] / r['theirs']:.2f} |")
            print(rows[-1], flush=True)
    name = torch.cuda.get_device_name(0)
    lines += ["## GPU: DiT guided sampling", "",
              f"Measured on {name} (torch {torch.__version__}, diffusers {diffusers.__version__}) on "
              f"{time.strftime('%Y-%m-%d')}: a latent DiT of {params:.0f}M parameters ({spec['layers']} layers, "
              f"hidden {spec['heads'] * spec['head_dim']}, patch 2, {spec['latent']}×{spec['latent']}×4 latents, "
              f"DiT-{'XL/2' if size == 'xl' else 'small'} layout) with an AutoencoderKL "
              f"{spec['vae_channels']} decoding to {spec['latent'] * 2 ** (len(spec['vae_channels']) - 1)}² RGB, "
              f"random weights (built in {build:.0f} s); {args.gpu_n} images per batch, labels spread over the 1000 "
              f"classes, guidance scale s = {args.gpu_scale:g} (cfgdiff w = {args.gpu_scale - 1:g}), VAE decoding "
              f"included on both sides. diffusers: `DiTPipeline.__call__` (under `torch.autocast` for bf16); "
              f"cfgdiff: its sampler on the adapter over the scheduler's timesteps + `decode` (bf16 through "
              f"`prepare_eps_fn(autocast=True)`, as `cfgdiff sample --diffusers` does on CUDA). Best of "
              f"{args.repeats} runs (the first one warms up).", "",
              "| precision | sampler | steps | s | max abs diff | mean abs diff | DiTPipeline img/s | cfgdiff img/s | "
              "ratio |", "|---|---|---|---|---|---|---|---|---|", *rows, ""]
    report += lines
    Path(args.gpu_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.gpu_out).write_text("\n".join(lines) + "\n")


# -- main ---------------------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=",".join(ALL_SECTIONS))
    p.add_argument("--quick", action="store_true", help="a smoke run: seconds of training, few samples")
    p.add_argument("--out", default="reports/interop.md")
    p.add_argument("--gpu-out", default="reports/interop_gpu.md", help="the GPU section's table (written on CUDA)")
    p.add_argument("--work-dir", default="runs/interop", help="where the trained pipelines are saved")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-seconds", type=float, default=360.0, help="training time per model")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dit-layers", type=int, default=4)
    p.add_argument("--dit-heads", type=int, default=4)
    p.add_argument("--dit-head-dim", type=int, default=32)
    p.add_argument("--dit-lr", type=float, default=5e-4)
    p.add_argument("--unet-width", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--equality-stride", type=int, default=1, help="every k-th timestep")
    p.add_argument("--equality-batch", type=int, default=4)
    p.add_argument("--loop-n", type=int, default=256)
    p.add_argument("--loop-steps", type=_ints, default=[10, 25])
    p.add_argument("--scales", type=_floats, default=[2.0, 4.0], help="diffusers guidance scales s = w + 1")
    p.add_argument("--fid-n", type=int, default=1000)
    p.add_argument("--guidance-w", type=_floats, default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--guidance-steps", type=int, default=20)
    p.add_argument("--interval", type=_floats, default=[0.4, 2.0], help="σ_lo,σ_hi of the guidance interval")
    p.add_argument("--gpu-size", choices=("xl", "small"), default="xl")
    p.add_argument("--gpu-n", type=int, default=32)
    p.add_argument("--gpu-steps", type=int, default=25)
    p.add_argument("--gpu-scale", type=float, default=4.0)
    args = p.parse_args(argv)
    if args.quick:
        args.train_seconds, args.repeats, args.loop_n, args.loop_steps = 15.0, 1, 32, [10]
        args.scales, args.fid_n, args.guidance_w, args.equality_stride = [4.0], 100, [0.0, 1.0], 37
        args.dit_layers, args.gpu_size, args.gpu_n = 2, "small", 8
    torch.set_num_threads(args.threads)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(ALL_SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {', '.join(ALL_SECTIONS)}")
    t_start = time.perf_counter()
    report = ["# cfgdiff on diffusers models: equality, speed and what cfgdiff adds", "",
              f"Written by `benchmarks/interop.py` (`{' '.join(['python benchmarks/interop.py', *sys.argv[1:]])}`), "
              f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"diffusers {diffusers.__version__}, {torch.get_num_threads()} torch thread(s)"
              f"{', quick mode (smoke numbers)' if args.quick else ''}.", ""]
    if "train" in sections:
        section_train(args, report)
    if any(s in sections for s in ("equality", "loops", "guidance")):
        models = load_models(args)
        if "equality" in sections:
            section_equality(args, report, models)
        if "loops" in sections:
            section_loops(args, report, models)
        if "guidance" in sections:
            section_guidance(args, report, models)
    if "gpu" in sections:
        section_gpu(args, report)
    report.append(f"Total wall time {time.perf_counter() - t_start:.0f} s.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(report) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
