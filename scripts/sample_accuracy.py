"""How often a feature classifier recognises the class a sample was drawn for: per w of a ``cfgdiff sample`` .npz.

    python scripts/sample_accuracy.py runs/fmnist-10min/samples/grid.npz --features runs/fmnist-features

Prints a markdown table: w, N, accuracy ± its binomial standard error sqrt(a (1 - a) / N), chance = 1/K. The
classifier is the one ``cfgdiff train-features`` trained (its held-out accuracy on real images is in its record).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from cfgdiff.cli.sample import read_samples
from cfgdiff.evaluation.features import load_feature_classifier


def accuracy_rows(npz_path: str, features: str, batch_size: int = 500) -> list[tuple[float, int, float, float]]:
    """(w, N, accuracy, standard error) per w of the file: accuracy = mean over samples of [argmax p(y | x) = c]."""
    samples, data = read_samples(npz_path)  # a streamed sample: its .npy, read chunk by chunk
    extractor = load_feature_classifier(features)
    labels = torch.as_tensor(data["labels"], dtype=torch.long)
    rows = []
    for w, x in zip(data["w"].tolist(), samples, strict=True):
        correct = 0
        for start in range(0, x.shape[0], batch_size):
            with torch.no_grad():
                _, probs = extractor(torch.as_tensor(np.asarray(x[start:start + batch_size]), dtype=torch.float32))
            correct += int((probs.argmax(dim=1) == labels[start:start + batch_size]).sum())
        n = x.shape[0]
        a = correct / n
        rows.append((float(w), n, a, math.sqrt(a * (1 - a) / n)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("npz", help="an .npz written by cfgdiff sample (samples [W, N, ...], labels [N], w [W])")
    p.add_argument("--features", required=True, help="a cfgdiff train-features run directory")
    args = p.parse_args(argv)
    rows = accuracy_rows(args.npz, args.features)
    shape = read_samples(args.npz)[0].shape[2:]
    k = int(load_feature_classifier(args.features)(torch.zeros(1, *shape))[1].shape[1])
    print(f"| w | N | feature-classifier accuracy on the samples ± s.e. (chance {1 / k:.2f}) |")
    print("|---|---|---|")
    for w, n, a, se in rows:
        print(f"| {w:g} | {n} | {a:.3f} ± {se:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
