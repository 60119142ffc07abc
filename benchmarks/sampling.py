"""Sampling benchmark (run by hand, not a test): speed, NFE, guidance cost, chunk size, lucidrains, quality.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sampling.py --run-dir runs/digits --threads 2

Sections (``--sections``, comma-separated; all by default):

* ``speed``: per sampler and step count, guided, on the trained digits model at one chunk of ``--batch`` rows
  and on a random-weight 32×32 U-Net: wall time per image, NFE per image (a guided step counts 2), and the
  share of the wall time spent outside the network (the network's calls are timed by a wrapper);
* ``guided``: unguided, guided and guidance-interval sampling at equal steps at the default chunk size;
* ``chunks``: per-image time of guided sampling against the chunk size, batched guidance (one call of 2B rows)
  against two calls of B rows: the figures behind ``cfgdiff.sampling.generate.DEFAULT_BATCH_SIZE``;
* ``lucidrains``: denoising-diffusion-pytorch's classifier_free_guidance module sampling with its own DDIM
  loop, and the very same ``Unet`` instance wrapped into cfgdiff's eps_fn contract, sampled by cfgdiff at equal
  batch, steps and guidance (its package is looked for on ``--lucidrains-path`` and never imported from the
  package ``__init__``, which needs torchvision);
* ``quality``: FID / IS (``cfgdiff.evaluation.metrics`` with the digits-classifier features when available, else a
  pixel-space Fréchet distance, named as such) of DPM-Solver++(2M) at 10/15/20/25 steps and of the guidance
  interval against the paper's ancestral sampler at 256 steps, at the same w values;
* ``lucidrains_quality`` (only when named): the trained digits model inside lucidrains' own GaussianDiffusion
  loops (1000-step ancestral ``p_sample_loop`` and 250-step DDIM ``ddim_sample``) through an adapter, against
  cfgdiff's few-step solvers and guidance interval: FID / IS and images per second at equal w, samples, labels.

Writes ``--out`` (Markdown) and the same rows as CSV beside it; prints the tables as it goes.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # lucidrains' loops draw progress bars

import argparse
import importlib.util
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from markdown_report import Report  # beside this script

import cfgdiff
from cfgdiff.core.contract import null_labels
from cfgdiff.core.schedule import logsnr_grid
from cfgdiff.guidance import cfg, combine_cfg, guidance_interval_sigma, guided_fraction
from cfgdiff.models import UNet
from cfgdiff.sampling.generate import DEFAULT_BATCH_SIZE
from cfgdiff.sampling.pipeline import GuidedRun
from cfgdiff.sampling.solvers import sample_ddim

ALL_SECTIONS = ("speed", "guided", "chunks", "lucidrains", "quality")  # + "lucidrains_quality", by name


# -- instruments ---------------------------------------------------------------------------------------


class TimedEpsFn:
    """Wraps a network: counts calls and rows and adds up the wall time spent inside it."""

    def __init__(self, eps_fn) -> None:
        self.eps_fn = eps_fn
        self.num_classes = eps_fn.num_classes
        self.cuda = False
        self.reset()

    def reset(self) -> None:
        self.seconds, self.calls, self.rows = 0.0, 0, 0

    def __call__(self, z, logsnr, labels):
        t0 = time.perf_counter()
        eps = self.eps_fn(z, logsnr, labels)
        if eps.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.rows += z.shape[0]
        return eps


class TwoCallCFG:
    """ε̃ = (1 + w) ε(z, c) - w ε(z) from two calls of B rows (what lucidrains and un-batched pipelines do)."""

    def __init__(self, eps_fn, w: float) -> None:
        self.eps_fn, self.w, self.num_classes = eps_fn, float(w), eps_fn.num_classes

    def __call__(self, z, logsnr, labels):
        eps_cond = self.eps_fn(z, logsnr, labels)
        if self.w == 0.0:
            return eps_cond
        return combine_cfg(eps_cond, self.eps_fn(z, logsnr, null_labels(labels, self.num_classes)), self.w)


def timed_run(net: TimedEpsFn, labels: torch.Tensor, data_shape, *, w: float, seed: int, repeats: int = 1,
              **kwargs) -> dict:
    """Sample ``repeats`` times through one ``GuidedRun`` (``kwargs``: its options; ``guide`` a guide function of
    the benchmark's own); the best wall time, its network time and NFE per image."""
    run = GuidedRun.from_options(net, data_shape=data_shape, **kwargs)
    best = None
    for _ in range(repeats):
        net.reset()
        t0 = time.perf_counter()
        x = run.samples(labels, w, seed=seed)
        wall = time.perf_counter() - t0
        if best is None or wall < best[0]:
            best = (wall, net.seconds, net.rows, x)
    wall, net_s, rows, x = best
    n = labels.shape[0]
    return {"wall_s": wall, "ms_per_image": 1e3 * wall / n, "nfe_per_image": rows / n,
            "outside_net_pct": 100.0 * (wall - net_s) / wall, "x": x}


def random_unet32(base_channels: int, seed: int = 0) -> UNet:
    """The 'larger' network: a random-weight cfgdiff U-Net at 3×32×32 (output conv re-initialised)."""
    torch.manual_seed(seed)
    net = UNet(image_shape=(3, 32, 32), num_classes=10, base_channels=base_channels, channel_mults=(1, 2, 2))
    torch.nn.init.normal_(net.conv_out.weight, std=0.02)  # zero-initialised in cfgdiff: ε̂ would be 0
    net.data_shape = (3, 32, 32)
    net.x_bound = 1.0
    return net.eval().requires_grad_(False)


# -- output --------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


# -- sections ------------------------------------------------------------------------------------------


def section_speed(rep: Report, nets: dict, args) -> None:
    rep.text(f"## Speed per sampler (guided, w = {args.w}; one chunk)")
    rows = []
    for name, (net, n) in nets.items():
        labels = torch.arange(n) % 10
        for sampler in args.samplers:
            for steps in args.steps:
                r = timed_run(TimedEpsFn(net), labels, net.data_shape, w=args.w, sampler=sampler, steps=steps,
                              batch_size=n, seed=0, clip_x=True)
                rows.append({"network": name, "batch": n, "sampler": sampler, "steps": steps, **r})
                print(f"  {name} {sampler} {steps}: {r['ms_per_image']:.2f} ms/img", flush=True)
    rep.table("speed", rows, ["network", "batch", "sampler", "steps", "nfe_per_image", "ms_per_image",
                              "outside_net_pct"])


def section_guided(rep: Report, net, args) -> None:
    n, steps = args.guided_n, args.guided_steps
    sigma_lo, sigma_hi = args.interval
    rep.text(f"## Guided vs unguided (digits, dpmpp_2m, {steps} steps, chunk {DEFAULT_BATCH_SIZE}, {n} images)")
    labels = torch.arange(n) % 10
    rows = []
    for name, w, interval in (("unguided (w = 0)", 0.0, None), (f"guided (w = {args.w})", args.w, None),
                              (f"interval σ ∈ ({sigma_lo}, {sigma_hi}]", args.w, (sigma_lo, sigma_hi))):
        r = timed_run(TimedEpsFn(net), labels, net.data_shape, w=w, interval=interval, sampler="dpmpp_2m",
                      steps=steps, batch_size=DEFAULT_BATCH_SIZE, seed=0, clip_x=True, repeats=args.repeats)
        rows.append({"mode": name, **r})
    base = rows[0]["ms_per_image"]
    for row in rows:
        row["x_unguided"] = row["ms_per_image"] / base
    rep.table("guided", rows, ["mode", "nfe_per_image", "ms_per_image", "x_unguided", "outside_net_pct"])


def section_chunks(rep: Report, net, args) -> None:
    steps = args.chunk_steps
    rep.text(f"## Per-image time vs chunk size (digits, guided w = {args.w}, dpmpp_2m, {steps} steps)")
    rows = []
    for chunk in args.chunks:
        n = max(chunk, min(args.chunk_n, 4 * chunk)) if chunk < 16 else max(chunk, args.chunk_n)
        labels = torch.arange(n) % 10
        row = {"chunk": chunk, "images": n}
        for mode, guide in (("batched", None), ("two_calls", TwoCallCFG)):
            r = timed_run(TimedEpsFn(net), labels, net.data_shape, w=args.w, sampler="dpmpp_2m", steps=steps,
                          batch_size=chunk, seed=0, clip_x=True, guide=guide, repeats=args.repeats)
            row[f"{mode}_ms_per_image"] = r["ms_per_image"]
            if mode == "batched":
                row["outside_net_pct"] = r["outside_net_pct"]
        row["two_calls_over_batched"] = row["two_calls_ms_per_image"] / row["batched_ms_per_image"]
        rows.append(row)
        print(f"  chunk {chunk}: {row['batched_ms_per_image']:.2f} ms/img", flush=True)
    rep.table("chunks", rows, ["chunk", "images", "batched_ms_per_image", "two_calls_ms_per_image",
                               "two_calls_over_batched", "outside_net_pct"])


def _load_lucidrains(path: str):
    """denoising_diffusion_pytorch/classifier_free_guidance.py loaded by itself (its package needs torchvision)."""
    if path and path not in sys.path:
        sys.path.append(path)  # for einops; appended, so our own packages win
    spec = importlib.util.find_spec("denoising_diffusion_pytorch")
    root = Path(spec.submodule_search_locations[0]) if spec else Path(path) / "denoising_diffusion_pytorch"
    file = root / "classifier_free_guidance.py"
    if not file.is_file():
        raise FileNotFoundError(f"no {file}; pip install --no-deps --target {path} denoising-diffusion-pytorch einops")
    mod_spec = importlib.util.spec_from_file_location("ddp_classifier_free_guidance", file)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    version = "?"
    for dist in Path(file).parents[1].glob("denoising_diffusion_pytorch-*.dist-info"):
        version = dist.name.split("-")[1].removesuffix(".dist")
    return module, version


class LucidrainsEpsFn:
    """lucidrains' classifier-free-guidance ``Unet`` under cfgdiff's contract ε = eps_fn(z, λ, labels).

    Its time is the discrete index t of its own ᾱ_t table (cosine, T steps) with z_t = sqrt(ᾱ_t) x +
    sqrt(1 - ᾱ_t) ε, the same variance-preserving latent as ours; λ(t) = log(ᾱ_t / (1 - ᾱ_t)) falls with t, and
    a λ maps to the continuous t that interpolates that table linearly (exact at its integer times), clamped
    to [0, T-1]. Its null class is a learned embedding: label K sets ``cond_keep_mask`` to False.
    """

    def __init__(self, unet, diffusion) -> None:
        self.unet = unet
        self.num_classes = unet.classes_emb.num_embeddings
        ac = diffusion.alphas_cumprod.double()
        self.logsnr_table = torch.log(ac) - torch.log1p(-ac)  # [T], decreasing in t
        self.data_shape = (unet.channels, diffusion.image_size, diffusion.image_size)

    def time_from_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        table = self.logsnr_table.flip(0)  # increasing, index j <-> t = T-1-j
        lam = logsnr.double().clamp(float(table[0]), float(table[-1]))
        j = torch.searchsorted(table, lam).clamp(1, table.numel() - 1)
        frac = (lam - table[j - 1]) / (table[j] - table[j - 1])
        return (table.numel() - 1 - (j - 1 + frac)).to(torch.float32)

    def __call__(self, z, logsnr, labels):
        keep = labels < self.num_classes
        return self.unet(z, self.time_from_logsnr(logsnr), labels.clamp(max=self.num_classes - 1),
                         cond_drop_prob=0.0, cond_keep_mask=keep)


def section_lucidrains(rep: Report, args) -> None:
    try:
        ddp, version = _load_lucidrains(args.lucidrains_path)
    except (ImportError, FileNotFoundError) as err:
        rep.text(f"## lucidrains: skipped ({err})")
        return
    batch, steps, w, size = args.lr_batch, args.lr_steps, args.w, 32
    torch.manual_seed(0)
    unet = ddp.Unet(dim=args.lr_dim, num_classes=10, dim_mults=(1, 2, 4), channels=3).eval()
    diffusion = ddp.GaussianDiffusion(unet, image_size=size, timesteps=1000, sampling_timesteps=steps,
                                      ddim_sampling_eta=0.0).eval()
    # the paper's CFG: no parallel-component removal (its default), no rescale
    unet.forward_with_cond_scale = _textbook_cfg(unet.forward_with_cond_scale)
    n_params = sum(p.numel() for p in unet.parameters())
    rep.text(f"## Side by side with lucidrains denoising-diffusion-pytorch {version} (classifier_free_guidance)")
    rep.text(f"Same random-weight `Unet(dim={args.lr_dim}, dim_mults=(1, 2, 4))` ({n_params / 1e6:.2f}M parameters), "
             f"3×{size}×{size}, batch {batch}, {steps} DDIM steps (η = 0), cond_scale = {w + 1} (w = {w}), "
             "remove_parallel_component=False, rescaled_phi=0. cfgdiff samples the same λ points "
             "(its DDIM times mapped to λ) through the eps_fn wrapper.")
    labels = torch.arange(batch) % 10
    eps_fn = LucidrainsEpsFn(unet, diffusion)
    times = list(reversed(torch.linspace(-1, 999, steps=steps + 1).int().tolist()))[:-1]  # its evaluation times
    grid = torch.cat([eps_fn.logsnr_table[times], torch.tensor([20.0], dtype=torch.float64)])
    timed_net = TimedEpsFn(eps_fn)
    results = {}
    for name in ("lucidrains loop", "cfgdiff ddim (same λ points)", "cfgdiff dpmpp_2m (same λ points)"):
        best = math.inf
        for _ in range(args.repeats):
            torch.manual_seed(1)
            z = torch.randn(batch, 3, size, size)
            torch.manual_seed(1)
            t0 = time.perf_counter()
            if name.startswith("lucidrains"):
                with torch.inference_mode():
                    img = diffusion.ddim_sample(labels, (batch, 3, size, size), cond_scale=w + 1.0, rescaled_phi=0.0)
                x = img * 2 - 1
            else:
                timed_net.reset()
                solver = sample_ddim if "ddim" in name else cfgdiff.sampling.solvers.sample_dpmpp_2m
                x = solver(cfg(timed_net, w), (batch, 3, size, size), labels, grid=grid, z=z, clip_x=True)
            best = min(best, time.perf_counter() - t0)
        results[name] = (best, x)
    base = results["lucidrains loop"][0]
    rows = [{"sampler": k, "images_per_s": batch / v[0], "speedup_vs_lucidrains": base / v[0]}
            for k, v in results.items()]
    rep.table("lucidrains", rows, ["sampler", "images_per_s", "speedup_vs_lucidrains"])
    # Same computation? Without x̂ clipping the two DDIM loops are the same arithmetic: compare the outputs.
    # (With clipping they differ by design: lucidrains keeps the guided ε̂ after clipping x̂, cfgdiff
    # recomputes ε̂ from the clipped x̂ so that z' = α' x̂ + σ' ε̂ stays consistent.)
    few = min(batch, 4)
    torch.manual_seed(1)
    z = torch.randn(few, 3, size, size)
    torch.manual_seed(1)
    with torch.inference_mode():
        theirs = diffusion.ddim_sample(labels[:few], (few, 3, size, size), cond_scale=w + 1.0, rescaled_phi=0.0,
                                       clip_denoised=False) * 2 - 1
    ours = sample_ddim(cfg(eps_fn, w), (few, 3, size, size), labels[:few], grid=grid, z=z, clip_x=False)
    rel = float((ours - theirs).abs().max() / theirs.abs().max())
    rep.text(f"Unclipped, the two DDIM loops give the same images: max |Δx| / max |x| = {rel:.1e} (float32).")


class CfgdiffAsLucidrainsUnet(torch.nn.Module):
    """cfgdiff's trained ε-network behind the interface lucidrains' ``GaussianDiffusion`` drives.

    Its forward maps (x_t, t, classes) to our ε at λ_t = log(ᾱ_t / (1 - ᾱ_t)) from the diffusion's own ᾱ table
    (x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε is exactly our variance-preserving latent at λ_t); its "dropped"
    pass (``cond_drop_prob=1``) uses our null label K. ``forward_with_cond_scale`` is lucidrains' own method
    with remove_parallel_component=False and rescaled_phi=0: (1 + w) ε_c - w ε_u with cond_scale = w + 1.
    """

    def __init__(self, net, ddp) -> None:
        super().__init__()
        self.net, self.ddp = net, ddp
        self.num_classes = net.num_classes
        self.channels = self.out_dim = net.data_shape[0]
        self.self_condition = False
        self.random_or_learned_sinusoidal_cond = False
        self.cond_drop_prob = 0.0
        self.logsnr_table: torch.Tensor | None = None
        self.rows = 0

    def attach(self, diffusion) -> None:
        ac = diffusion.alphas_cumprod.double()
        self.logsnr_table = (torch.log(ac) - torch.log1p(-ac)).float()

    def forward(self, x, time, classes, cond_drop_prob=0.0, cond_keep_mask=None):
        labels = classes.long()
        drop = torch.full_like(labels, cond_drop_prob >= 1.0, dtype=torch.bool)
        if cond_keep_mask is not None:
            drop |= ~cond_keep_mask
        labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        self.rows += x.shape[0]
        return self.net(x, self.logsnr_table[time.long()].to(x.dtype), labels)

    def forward_with_cond_scale(self, *args, cond_scale=1.0, rescaled_phi=0.0, **kwargs):
        if cond_scale == 1:  # lucidrains returns a bare tensor here, which its model_predictions cannot unpack
            out = self.forward(*args, cond_drop_prob=0.0)
            return out, out
        return self.ddp.Unet.forward_with_cond_scale(self, *args, cond_scale=cond_scale, rescaled_phi=0.0,
                                                     remove_parallel_component=False)


def section_lucidrains_quality(rep: Report, net, args) -> None:
    try:
        ddp, version = _load_lucidrains(args.lucidrains_path)
    except (ImportError, FileNotFoundError) as err:
        rep.text(f"## lucidrains quality: skipped ({err})")
        return
    fid_name, is_name, metric = _quality_metric(args)
    n, chunk, shape = args.lq_n, DEFAULT_BATCH_SIZE, tuple(net.data_shape)
    labels = torch.arange(n) % 10
    sigma_lo, sigma_hi = args.interval
    adapter = CfgdiffAsLucidrainsUnet(net, ddp).eval()
    diffusions = {}
    for steps in args.lq_lucidrains_steps:  # 1000 = its ancestral p_sample_loop, fewer = its DDIM
        d = ddp.GaussianDiffusion(adapter, image_size=shape[-1], timesteps=1000, sampling_timesteps=steps,
                                  objective="pred_noise", beta_schedule=args.lq_beta_schedule,
                                  ddim_sampling_eta=args.lq_ddim_eta).eval()
        diffusions[steps] = d
    adapter.attach(diffusions[args.lq_lucidrains_steps[0]])
    lam = adapter.logsnr_table
    rep.text(f"## Equal-FID speed against lucidrains' own loops (denoising-diffusion-pytorch {version}, trained "
             f"digits model; {n} samples, {n // 10} per class, {fid_name}, {is_name})")
    rep.text(f"lucidrains `GaussianDiffusion(timesteps=1000, beta_schedule='{args.lq_beta_schedule}', "
             f"objective='pred_noise')` drives cfgdiff's trained ε-net through an adapter (ε at λ_t = "
             f"log(ᾱ_t / (1 - ᾱ_t)), λ from {float(lam[0]):.2f} at t = 0 to {float(lam[-1]):.2f} at t = 999; "
             "null pass = label 10; its `forward_with_cond_scale` with remove_parallel_component=False, "
             "rescaled_phi=0), x̂ clipped to [-1, 1] (its default), its [-1, 1] → [0, 1] output mapped back. "
             f"1000 steps = `p_sample_loop` (ancestral); fewer = `ddim_sample` (η = {args.lq_ddim_eta}). "
             f"Both sides sample in chunks of {chunk}; cfgdiff guides with one batched call of 2B rows.")
    rows = []
    for w in args.lq_w:
        configs = [("lucidrains", s, w) for s in args.lq_lucidrains_steps]
        if args.lq_ddim_unclipped:  # its DDIM with clip_denoised=False: no clipped-x̂ / kept-ε̂ mismatch
            configs += [("lucidrains_unclipped", s, w) for s in args.lq_lucidrains_steps if s < 1000]
        configs += [("dpmpp_2m", s, w) for s in args.lq_steps]
        configs += [("dpmpp_2m_sde", s, w) for s in args.lq_sde_steps]
        if w > 0:
            configs += [("dpmpp_2m", s, (w, (sigma_lo, sigma_hi))) for s in args.lq_interval_steps]
        for seed in args.lq_seeds:
            for sampler, steps, weight in configs:
                weight, interval = weight if isinstance(weight, tuple) else (weight, None)
                if seed != args.lq_seeds[0] and not (sampler == "lucidrains" and steps in args.lq_reseed_lucidrains
                                                     or not sampler.startswith("lucidrains")):
                    continue
                t0 = time.perf_counter()
                if sampler.startswith("lucidrains"):
                    d = diffusions[steps]
                    adapter.rows = 0
                    torch.manual_seed(seed)
                    outs = []
                    with torch.inference_mode():
                        for i in range(0, n, chunk):
                            lab = labels[i:i + chunk]
                            loop = d.p_sample_loop if steps == d.num_timesteps else d.ddim_sample
                            kw = {"clip_denoised": False} if sampler.endswith("unclipped") else {}
                            outs.append(loop(lab, (lab.shape[0], *shape), cond_scale=w + 1.0, rescaled_phi=0.0, **kw))
                    x = torch.cat(outs) * 2 - 1
                    nfe = adapter.rows / n
                    name = "lucidrains p_sample_loop" if steps == d.num_timesteps else "lucidrains ddim_sample"
                    name += " (unclipped)" if sampler.endswith("unclipped") else ""
                else:
                    timed = TimedEpsFn(net)
                    run = GuidedRun(timed, interval=interval, sampler=sampler, steps=steps, batch_size=chunk,
                                    data_shape=shape, sampler_options={"clip_x": True})
                    x = run.samples(labels, weight, seed=seed)
                    nfe = timed.rows / n
                    name = f"cfgdiff {sampler}"
                wall = time.perf_counter() - t0
                fid, isc = metric(x)
                mode = f"interval ({sigma_lo}, {sigma_hi}]" if interval else "full"
                rows.append({"w": w, "seed": seed, "sampler": name, "steps": steps, "guidance": mode,
                             "nfe_per_image": nfe, "fid": fid, "is": isc, "wall_s": wall, "images_per_s": n / wall})
                print(f"  w={w} seed={seed} {name} {steps} {mode}: FID {fid:.3g} IS {isc:.3g} ({wall:.1f} s)",
                      flush=True)
    for row in rows:
        refs = [r for r in rows if r["w"] == row["w"] and r["seed"] == row["seed"] and r["sampler"].startswith("luc")
                and "unclipped" not in r["sampler"]]
        for ref in refs:
            key = "x_vs_lucidrains_" + ("ancestral" if "p_sample" in ref["sampler"] else f"ddim{ref['steps']}")
            row[key] = row["images_per_s"] / ref["images_per_s"]
    # Faithful adapter? Unclipped, lucidrains' DDIM loop and cfgdiff's sample_ddim on the same λ points are the
    # same arithmetic on the same network: compare the images (4 rows, 20 steps, the first w).
    few, w0, d = 4, args.lq_w[0], ddp.GaussianDiffusion(adapter, image_size=shape[-1], timesteps=1000,
                                                         sampling_timesteps=20, beta_schedule=args.lq_beta_schedule,
                                                         ddim_sampling_eta=0.0).eval()
    times = list(reversed(torch.linspace(-1, 999, steps=21).int().tolist()))[:-1]
    grid = torch.cat([adapter.logsnr_table.double()[times], torch.tensor([20.0], dtype=torch.float64)])
    torch.manual_seed(3)
    z = torch.randn(few, *shape)
    torch.manual_seed(3)
    with torch.inference_mode():
        theirs = d.ddim_sample(labels[:few], (few, *shape), cond_scale=w0 + 1.0, rescaled_phi=0.0,
                               clip_denoised=False) * 2 - 1
        ours = sample_ddim(cfg(net, w0), (few, *shape), labels[:few], grid=grid, z=z, clip_x=False)
    rel = float((ours - theirs).abs().max() / theirs.abs().max())
    rep.text(f"Adapter check: unclipped, lucidrains' ddim_sample and cfgdiff's sample_ddim on the same 20 λ points "
             f"give the same images at w = {w0}: max |Δx| / max |x| = {rel:.1e} (float32).")
    ratio_cols = sorted({k for r in rows for k in r if k.startswith("x_vs_")})
    rep.table("lucidrains_quality", rows, ["w", "seed", "sampler", "steps", "guidance", "nfe_per_image", "fid", "is",
                                           "wall_s", "images_per_s", *ratio_cols])


def _textbook_cfg(forward_with_cond_scale):
    def wrapped(*a, **kw):
        kw.setdefault("remove_parallel_component", False)
        kw.setdefault("rescaled_phi", 0.0)
        return forward_with_cond_scale(*a, **kw)

    return wrapped


def _quality_metric(args):
    """(name, fn(x) -> (fid, is)) with cfgdiff.evaluation.metrics' digits-classifier features, or a pixel stand-in."""
    from cfgdiff.data import load_dataset

    real = load_dataset("digits", "train").x.float()
    try:
        from cfgdiff.evaluation.features import feature_extractor_for
        from cfgdiff.evaluation.metrics import extract_features, frechet_distance, inception_score, metric_names

        extractor = feature_extractor_for("digits")
        ref = extract_features(extractor, real)
        mu_r, cov_r = ref.statistics()
        fid_name, is_name = metric_names(extractor.name)

        def metric(x):
            fs = extract_features(extractor, x)
            mu, cov = fs.statistics()
            return frechet_distance(mu, cov, mu_r, cov_r), inception_score(fs.probs)[0]

        return fid_name, is_name, metric
    except Exception as err:  # noqa: BLE001 - any failure: fall back to the stated stand-in
        print(f"  metrics unavailable ({err}); using pixel-space Fréchet distance", flush=True)
        flat = real.reshape(real.shape[0], -1).double().numpy()
        mu_r, cov_r = flat.mean(0), np.cov(flat, rowvar=False)

        def metric(x):
            f = x.reshape(x.shape[0], -1).double().numpy()
            from scipy.linalg import sqrtm

            mu, cov = f.mean(0), np.cov(f, rowvar=False)
            covmean = sqrtm(cov @ cov_r).real
            return float(((mu - mu_r) ** 2).sum() + np.trace(cov + cov_r - 2 * covmean)), float("nan")

        return "Fréchet distance (pixels, stand-in)", "IS (n/a)", metric


def section_quality(rep: Report, net, args) -> None:
    fid_name, is_name, metric = _quality_metric(args)
    n = args.quality_n
    labels = torch.arange(n) % 10
    sigma_lo, sigma_hi = args.interval
    rep.text(f"## Quality at equal NFE (digits, {n} samples, {fid_name}, {is_name}; chunk {DEFAULT_BATCH_SIZE})")
    rows = []
    grid_lams = [float(v) for v in logsnr_grid(max(args.quality_steps), "cosine")[:-1]]
    for w in args.quality_w:
        configs = [("ancestral", args.ancestral_steps, None)] if args.ancestral_steps > 0 else []
        for sampler in args.quality_samplers:
            configs += [(sampler, s, None) for s in args.quality_steps]
            if w > 0:
                configs.append((sampler, max(args.quality_steps), (sigma_lo, sigma_hi)))
        for sampler, steps, interval in configs:
            timed = TimedEpsFn(net)
            run = GuidedRun(timed, interval=interval, sampler=sampler, steps=steps, batch_size=DEFAULT_BATCH_SIZE,
                            data_shape=net.data_shape, sampler_options={"clip_x": True})
            t0 = time.perf_counter()
            x = run.samples(labels, w, seed=args.seed)
            wall = time.perf_counter() - t0
            fid, isc = metric(x)
            mode = f"interval ({sigma_lo}, {sigma_hi}]" if interval else "full"
            rows.append({"w": w, "sampler": sampler, "steps": steps, "guidance": mode,
                         "nfe_per_image": timed.rows / n, "fid": fid, "is": isc, "s_per_image": wall / n})
            print(f"  w={w} {sampler} {steps} {mode}: FID {fid:.3g} IS {isc:.3g} ({wall:.0f} s)", flush=True)
    rep.table("quality", rows, ["w", "sampler", "steps", "guidance", "nfe_per_image", "fid", "is", "s_per_image"])
    frac = guided_fraction(guidance_interval_sigma(1.0, sigma_lo=sigma_lo, sigma_hi=sigma_hi), grid_lams)
    rep.text(f"Interval σ ∈ ({sigma_lo}, {sigma_hi}] guides {100 * frac:.0f}% of the {len(grid_lams)} cosine-grid "
             f"steps: NFE {1 + frac:.2f} per step instead of 2 ({100 * (1 - (1 + frac) / 2):.0f}% fewer).")


# -- main ----------------------------------------------------------------------------------------------


def _floats(text):
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default="runs/digits", help="trained digits run (cfgdiff.load_model)")
    p.add_argument("--sections", default=",".join(ALL_SECTIONS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (intra-op)")
    p.add_argument("--w", type=float, default=1.0, help="guidance weight (the paper's w) for the speed sections")
    p.add_argument("--samplers", default="ancestral,ddim,dpmpp_2m,dpmpp_2m_sde,dpmpp_3m,heun")
    p.add_argument("--steps", type=_ints, default=[10, 25], help="step counts for the speed section")
    p.add_argument("--batch", type=int, default=256, help="digits chunk for the speed section")
    p.add_argument("--unet32-batch", type=int, default=16)
    p.add_argument("--unet32-channels", type=int, default=32)
    p.add_argument("--unet32-samplers", default="ddim,dpmpp_2m")
    p.add_argument("--guided-n", type=int, default=256)
    p.add_argument("--guided-steps", type=int, default=20)
    p.add_argument("--interval", type=_floats, default=[0.4, 2.0], help="σ_lo,σ_hi of the guidance interval")
    p.add_argument("--chunks", type=_ints, default=[1, 4, 16, 64, 256])
    p.add_argument("--chunk-n", type=int, default=256, help="images per chunk-size measurement (chunks >= 16)")
    p.add_argument("--chunk-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1, help="timing repeats (the best is kept)")
    p.add_argument("--lucidrains-path", default="/tmp/ddp-site",
                   help="a pip --target folder holding denoising_diffusion_pytorch and einops")
    p.add_argument("--lr-batch", type=int, default=16)
    p.add_argument("--lr-steps", type=int, default=10)
    p.add_argument("--lr-dim", type=int, default=32)
    p.add_argument("--quality-n", type=int, default=200)
    p.add_argument("--quality-w", type=_floats, default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--quality-steps", type=_ints, default=[10, 15, 20, 25])
    p.add_argument("--ancestral-steps", type=int, default=256, help="0 skips the ancestral reference")
    p.add_argument("--quality-samplers", default="dpmpp_2m", help="few-step samplers to score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lq-n", type=int, default=200, help="lucidrains_quality: samples (class-balanced)")
    p.add_argument("--lq-w", type=_floats, default=[1.0], help="lucidrains_quality: guidance weights")
    p.add_argument("--lq-lucidrains-steps", type=_ints, default=[1000, 250],
                   help="lucidrains_quality: its loops; 1000 = ancestral p_sample_loop, fewer = ddim_sample")
    p.add_argument("--lq-beta-schedule", default="cosine", choices=["cosine", "linear"])
    p.add_argument("--lq-ddim-eta", type=float, default=0.0, help="lucidrains_quality: its DDIM η (its default: 1)")
    p.add_argument("--lq-steps", type=_ints, default=[10, 15, 20, 25], help="lucidrains_quality: dpmpp_2m steps")
    p.add_argument("--lq-sde-steps", type=_ints, default=[25], help="lucidrains_quality: dpmpp_2m_sde steps")
    p.add_argument("--lq-interval-steps", type=_ints, default=[15, 25],
                   help="lucidrains_quality: dpmpp_2m + guidance interval steps")
    p.add_argument("--lq-ddim-unclipped", action="store_true",
                   help="lucidrains_quality: also its DDIM with clip_denoised=False")
    p.add_argument("--lq-seeds", type=_ints, default=[0], help="lucidrains_quality: seeds (first: all rows)")
    p.add_argument("--lq-reseed-lucidrains", type=_ints, default=[250],
                   help="lucidrains_quality: its loops rerun at the later seeds (all cfgdiff rows are)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sampling.md"))
    args = p.parse_args(argv)
    args.samplers = [s for s in args.samplers.split(",") if s]
    args.quality_samplers = [s for s in args.quality_samplers.split(",") if s]
    sections = [s for s in args.sections.split(",") if s]
    torch.set_num_threads(args.threads)

    rep = Report(args.out, cell=_fmt, csv_all_keys=False)  # only the shown columns, as shown
    rep.text("# cfgdiff sampling benchmark")
    rep.text(f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rep.text(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads, {stamp}")
    digits = None
    if set(sections) & {"speed", "guided", "chunks", "quality", "lucidrains_quality"}:
        digits = cfgdiff.load_model(args.run_dir)
        rep.text(f"Digits model: {args.run_dir}, step {digits.train_step}, "
                 f"{sum(p.numel() for p in digits.parameters()) / 1e6:.2f}M parameters, {tuple(digits.data_shape)}.")
    t_start = time.perf_counter()
    if "speed" in sections:
        unet32 = random_unet32(args.unet32_channels)
        rep.text(f"Random U-Net: 3×32×32, base_channels {args.unet32_channels}, "
                 f"{sum(p.numel() for p in unet32.parameters()) / 1e6:.2f}M parameters.")
        section_speed(rep, {"digits": (digits, args.batch)}, args)
        saved = args.samplers
        args.samplers = [s for s in args.unet32_samplers.split(",") if s]
        section_speed(rep, {"unet32": (unet32, args.unet32_batch)}, args)
        args.samplers = saved
    if "guided" in sections:
        section_guided(rep, digits, args)
    if "chunks" in sections:
        section_chunks(rep, digits, args)
    if "lucidrains" in sections:
        section_lucidrains(rep, args)
    if "quality" in sections:
        section_quality(rep, digits, args)
    if "lucidrains_quality" in sections:
        section_lucidrains_quality(rep, digits, args)
    rep.finish(time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
