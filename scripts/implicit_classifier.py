"""Implicit classifier of a trained gmm2d model against the exact Bayes classifier, as a function of λ.

    OMP_NUM_THREADS=1 .venv/bin/cfgdiff train --data gmm2d --run-dir runs/gmm2d
    OMP_NUM_THREADS=1 .venv/bin/python scripts/implicit_classifier.py --run-dir runs/gmm2d

For z_λ = α x + σ ε with x from the exact three-Gaussian mixture and its class c, compare

    implicit:  ∇ log p^i(c | z_λ) = -(1/σ) [ε_θ(z, c) - ε_θ(z)]   (cfgdiff.guidance.implicit_classifier_grad)
    exact:     ∇ log p(c | z_λ) = ∇ log p(z_λ | c) - ∇ log p(z_λ)  (GaussianMixture.class_log_prob_grad)

by the cosine similarity of the two vectors (per sample; mean and median per λ) and the norm ratio
||implicit|| / ||exact||. Also the exact eps_fn itself (cos = 1 up to round-off) as a check of the plumbing.
Writes reports/implicit_classifier.md and reports/implicit_classifier.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cfgdiff.core.schedule import alpha_sigma
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.guidance import implicit_classifier_grad
from cfgdiff.training import load_model


def compare(eps_fn, mixture: GaussianMixture, logsnrs: np.ndarray, n: int, seed: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for lam in logsnrs:
        labels = torch.arange(n) % mixture.num_classes
        x = mixture.sample(labels, gen)
        eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        logsnr = torch.full((n,), float(lam), dtype=torch.float64)
        alpha, sigma = alpha_sigma(logsnr)
        z = alpha[:, None] * x + sigma[:, None] * eps
        with torch.no_grad():
            g_model = implicit_classifier_grad(eps_fn, z.to(dtype), logsnr.to(dtype), labels).to(torch.float64)
        g_exact = mixture.class_log_prob_grad(z, logsnr, labels)
        cos = torch.nn.functional.cosine_similarity(g_model, g_exact, dim=1, eps=1e-300)
        ratio = g_model.norm(dim=1) / g_exact.norm(dim=1).clamp_min(1e-300)
        rows.append((float(lam), float(cos.mean()), float(cos.median()), float(ratio.median()),
                     float(g_exact.norm(dim=1).median())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="implicit vs exact classifier gradient on the gmm2d testbed")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/gmm2d"))
    parser.add_argument("--n", type=int, default=3000, help="points per λ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    mixture = GaussianMixture.three_gaussians()
    model = load_model(args.run_dir)
    logsnrs = np.arange(-8.0, 10.01, 1.0)
    rows = compare(model, mixture, logsnrs, args.n, args.seed, torch.float32)
    exact_rows = compare(mixture, mixture, logsnrs, 200, args.seed, torch.float64)
    seconds = time.perf_counter() - t0

    fig = Figure(figsize=(10, 4), dpi=100, facecolor="white")
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    lam = [r[0] for r in rows]
    ax1.plot(lam, [r[1] for r in rows], "-o", ms=3, label="trained model, mean")
    ax1.plot(lam, [r[2] for r in rows], "-s", ms=3, label="trained model, median")
    ax1.plot(lam, [r[1] for r in exact_rows], "--", color="gray", label="exact ε* (check)")
    ax1.set_xlabel("log-SNR λ")
    ax1.set_ylabel("cos(implicit ∇log p^i(c|z), exact ∇log p(c|z))")
    ax1.set_ylim(-1.05, 1.05)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.plot(lam, [r[3] for r in rows], "-o", ms=3, label="median ||implicit|| / ||exact||")
    ax2.axhline(1.0, color="gray", ls="--")
    ax2.set_xlabel("log-SNR λ")
    ax2.set_ylabel("norm ratio")
    ax2.set_yscale("log")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle("Implicit classifier of the trained gmm2d model vs the exact Bayes classifier", fontsize=11)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(args.out / "implicit_classifier.png")

    table = ["| λ | mean cos | median cos | median norm ratio | median ‖exact grad‖ | exact ε*: mean cos |",
             "|---|---|---|---|---|---|"]
    for r, e in zip(rows, exact_rows, strict=True):
        table.append(f"| {r[0]:g} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3g} | {e[1]:.6f} |")
    step = getattr(model, "train_step", "?")
    good = [r[0] for r in rows if r[1] > 0.95]
    span = f"λ in [{min(good):g}, {max(good):g}]" if good else "no λ"
    reading = (
        f"Reading: the trained model's implicit classifier points the exact way (mean cos > 0.95) for {span}, "
        "where the classes overlap under the noise and the exact gradient is large. Outside that range the "
        "exact ∇ log p(c | z) is small (at low λ every class looks alike; at high λ almost every point is deep "
        "inside its own class, p(c | z) ≈ 1), while the network's difference ε_θ(z, c) - ε_θ(z) keeps an error "
        "of its own that the 1/σ factor magnifies as σ → 0 (σ = 0.018 at λ = 8): the norm ratio grows and the "
        "direction is lost. Guidance there multiplies that error by w σ, so it barely moves the sample, which is "
        "consistent with CFG on gmm2d still separating the classes as in the paper's Figure 2.")
    text = f"""# Implicit classifier vs the exact classifier (gmm2d)

Commands:

```
OMP_NUM_THREADS=1 .venv/bin/cfgdiff train --data gmm2d --run-dir {args.run_dir}
OMP_NUM_THREADS=1 .venv/bin/python scripts/implicit_classifier.py --run-dir {args.run_dir} --n {args.n}
```

Model: {args.run_dir} (MLP, step {step}, EMA weights). For each λ, {args.n} points z_λ = α x + σ ε with x drawn
from the exact three-Gaussian mixture (`GaussianMixture.three_gaussians()`, balanced classes), and

- implicit: ∇ log p^i(c | z_λ) = -(1/σ) [ε_θ(z, c) - ε_θ(z)] (`implicit_classifier_grad`, one batched call);
- exact: ∇ log p(c | z_λ) = ∇ log p(z_λ | c) - ∇ log p(z_λ) (`GaussianMixture.class_log_prob_grad`).

The last column feeds the exact ε* through the same function: cos = 1 to round-off, so the comparison
measures the trained network only. Took {seconds:.0f} s.

![implicit classifier](implicit_classifier.png)

{chr(10).join(table)}

{reading}
"""
    (args.out / "implicit_classifier.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
