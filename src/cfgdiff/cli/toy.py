"""``cfgdiff toy``: the paper's Figure 2 on three 2-D Gaussians, exact guided densities and CFG samples."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cfgdiff.cli.arguments import UsageError, float_list, output_path, positive_int, unit_float
from cfgdiff.sampling.solvers import SAMPLERS

EXIT_OK = 0


def add_parser(sub) -> None:
    p = sub.add_parser("toy", help="the paper's Figure 2: exact guided densities and CFG samples, 3 Gaussians",
                       description="For each w, the exact guided densities p(z|c) p(c|z)^w of three 2-D Gaussians "
                                   "(normalised on a grid) above samples drawn with CFG from the exact scores.")
    p.add_argument("--w", type=float_list, default=[0.0, 1.0, 3.0, 10.0],
                   help="guidance weights in the paper's convention (default 0,1,3,10)")
    p.add_argument("--n-per-class", type=positive_int("--n-per-class"), default=500,
                   help="samples per class and w (default 500)")
    p.add_argument("--steps", type=positive_int("--steps"), default=128, help="sampling steps (default 128)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ancestral", help="sampler (default ancestral)")
    p.add_argument("--v-interp", type=unit_float("--v-interp"), default=0.3, help="the paper's v (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample noise streams (default 0)")
    p.add_argument("--out", type=output_path("--out"), default=Path("toy.png"), help="PNG path (default toy.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cfgdiff.core.toy import GaussianMixture
    from cfgdiff.evaluation.plotting import toy_guidance_figure
    from cfgdiff.sampling.generate import generate_samples

    if args.out.suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png path, got {args.out}")
    mixture = GaussianMixture.three_gaussians()
    labels = torch.arange(mixture.num_classes).repeat_interleave(args.n_per_class)
    extra = {"v_interp": args.v_interp} if args.sampler == "ancestral" else {}
    samples = {}
    for w in args.w:
        x = generate_samples(mixture, labels, w=w, sampler=args.sampler, steps=args.steps,
                             batch_size=labels.shape[0], seed=args.seed, dtype=torch.float64, **extra)
        samples[w] = (x.numpy(), labels.numpy())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    toy_guidance_figure(mixture, args.w, samples, args.out)
    print(f"wrote {args.out} (w = {', '.join(f'{w:g}' for w in args.w)})")
    return EXIT_OK
