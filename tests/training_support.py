"""Helpers of the training tests: a loss without random draws, small data sets, configs, state comparison."""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Callable

import torch

from cfgdiff.core.diffusion import diffuse, loss_eps_mse
from cfgdiff.data import Dataset

TINY_MLP = {"arch": "mlp", "hidden": 32, "depth": 1, "emb_dim": 32}
TINY_UNET = {"arch": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "emb_dim": 32,
             "groups": 4}


def fixed_noise_loss(model, batch, generator):
    """Algorithm 1's ε-MSE with λ and ε a fixed function of each example (nothing drawn from ``generator``).

    Equal examples get equal noise however the global batch is split (processes, accumulation), so two splits
    of the same batch compute the same per-example losses and their gradients differ only by the order of
    floating-point sums.
    """
    x = batch.x
    flat = x.reshape(x.shape[0], -1)
    key = (flat * torch.arange(1, flat.shape[1] + 1, dtype=x.dtype, device=x.device)).sum(1) + batch.labels
    logsnr = 8.0 * torch.sin(1.7 * key)  # [b] in [-8, 8]
    phase = torch.arange(1, flat.shape[1] + 1, dtype=x.dtype, device=x.device)
    eps = (1.7 * torch.sin(key[:, None] * 0.37 * phase + phase)).reshape(x.shape)  # pseudo-noise, variance ~1.4
    z = diffuse(x=x, eps=eps, logsnr=logsnr)
    return loss_eps_mse(model(z, logsnr, batch.labels), eps)


def image_dataset(n: int = 40, *, in_memory: bool = True, hflip: bool = False, seed: int = 0) -> Dataset:
    """n random uint8 images [n, 1, 6, 6] (asymmetric, so flips show), 3 classes."""
    g = torch.Generator().manual_seed(seed)
    stored = torch.randint(0, 256, (n, 1, 6, 6), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 3
    return Dataset("random", stored, labels, 3, ("a", "b", "c"), 1.0, pixel_max=255, hflip_default=hflip,
                   in_memory=in_memory, source={"format": "test", "count": n})


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_spawned_group(target: Callable[..., None], world: int, args: tuple, *, timeout: float = 120.0) -> bool:
    """``target(rank, *args)`` for rank in [0, world), each in a fresh (spawned) process; True when all exit 0.

    The wait ends early when one fails (the others may wait for it for ever); processes still running after
    ``timeout`` seconds are killed."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=target, args=(rank, *args)) for rank in range(world)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.exitcode is None for p in procs):
        if any(p.exitcode not in (None, 0) for p in procs):
            break
        time.sleep(0.02)
    for proc in procs:
        if proc.exitcode is None:
            proc.kill()
        proc.join()
    return all(p.exitcode == 0 for p in procs)


def fork_cli(argv: list[str], env: dict[str, str], output: str) -> int:
    """Run ``cfgdiff`` ARGV in a forked child process (a real process that signals reach, started without a
    fresh interpreter and torch import); its stdout and stderr go to the file ``output``. Returns the pid;
    the child's exit status is the CLI's."""
    import os
    import sys

    from cfgdiff.cli import build_parser
    from cfgdiff.data import load_dataset

    build_parser()  # import every command module once, in the parent, so no child pays for it
    load_dataset("gmm2d")
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # (its first use imports torch._dynamo: seconds)
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        os.environ.update(env)
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        from cfgdiff.cli import main

        code = main(argv)
    except BaseException:  # noqa: BLE001 - report anything and exit
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait_for(path, pid: int, timeout: float = 120.0) -> None:
    """Wait until ``path`` exists (or the process ``pid`` has ended, or the time is up)."""
    import os
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while not Path(path).exists() and time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            raise AssertionError(f"process {pid} ended before reaching {path}")
        time.sleep(0.01)
