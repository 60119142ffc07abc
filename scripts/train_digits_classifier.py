"""Train the digits feature classifier shipped as src/cfgdiff/assets/digits_classifier.safetensors.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_digits_classifier.py

Fixed recipe: the training split of ``cfgdiff.data.load_digits`` only (the test split is held out and gives
the stated accuracy), AdamW, cosine learning rate, small random shifts (±1 pixel) as augmentation, seed 0.
Its penultimate features give "FID (digits-classifier features)" and its softmax "IS (digits classifier)".
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cfgdiff.data import load_digits
from cfgdiff.evaluation.features import DigitsClassifierNet, load_digits_classifier, save_digits_classifier

ASSET = Path(__file__).resolve().parents[1] / "src" / "cfgdiff" / "assets" / "digits_classifier.safetensors"


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ±max_shift pixels (zero = background -1 padding)."""
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def accuracy(net: DigitsClassifierNet, x: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    return float((net(x).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSET)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train, test = load_digits("train"), load_digits("test")
    net = DigitsClassifierNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-2)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    t0 = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), args.batch_size):
            idx = order[start:start + args.batch_size]
            x = random_shift(train.x[idx], generator)
            loss = F.cross_entropy(net(x), train.labels[idx], label_smoothing=0.05)
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}, train acc {accuracy(net, train.x, train.labels):.4f}")
    test_acc = accuracy(net, test.x, test.labels)
    train_acc = accuracy(net, train.x, train.labels)
    seconds = time.perf_counter() - t0
    print(f"test accuracy {test_acc:.4f} ({len(test)} held-out images), train {train_acc:.4f}, {seconds:.0f} s")
    save_digits_classifier(net, args.out, {
        "test_accuracy": round(test_acc, 6),
        "train_accuracy": round(train_acc, 6),
        "test_count": len(test),
        "data": "digits (sklearn load_digits; cfgdiff.data fixed stratified split, seed 0, 20% test)",
        "recipe": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                   "optimizer": "AdamW(weight_decay=1e-2), cosine lr", "augment": "random shift ±1 px",
                   "label_smoothing": 0.05},
        "script": "scripts/train_digits_classifier.py",
    })
    reloaded = load_digits_classifier(args.out)
    _, probs = reloaded(test.x)
    assert abs(float((probs.argmax(1) == test.labels).float().mean()) - test_acc) < 1e-9
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
