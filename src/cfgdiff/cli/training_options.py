"""Options of the training loop shared by every command that trains a network (``train``,
``train-classifier``, and later ones): accumulation, checkpoints, non-finite batches, precision, batches.

Every option defaults to None ("not given"), so a command can tell an explicit flag from a default: new runs
take the loop's defaults (``cfgdiff.training.LoopConfig``), ``--resume`` changes only what was given.

Also ``train_with_progress``: the call of a training function under a progress bar, shared by
``train-classifier`` and ``train-features``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from cfgdiff.cli.arguments import nonnegative_float, nonnegative_int, positive_int, progress
from cfgdiff.cli.network_options import add_form_options, check_form, form_names

# option dest = LoopConfig field
LOOP_OPTIONS = ("hflip", "grad_accum", "keep", "save_every_minutes", "skip_nonfinite", "compile",
                "compile_backend", "tf32", "deterministic", "loader", "workers", "tensorboard")
# and precision / memory_format, read by cli.network_options.form_names (the old --autocast, --channels-last)


def add_loop_options(p: argparse.ArgumentParser) -> None:
    """Add the loop's options to a training command's parser."""
    g = p.add_argument_group("training loop (distribution, checkpoints, precision, batches)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips of the training images (default: on for RGB folders and CIFAR, "
                        "off for the MNIST family and digits); fixed for the run (not changeable on --resume)")
    g.add_argument("--grad-accum", type=positive_int("--grad-accum"), default=None, metavar="K",
                   help="micro-batches per optimizer step and process, for a global --batch-size larger than "
                        "memory: each process computes batch/(processes*K) examples at a time (default 1)")
    g.add_argument("--keep", type=nonnegative_int("--keep"), default=None, metavar="K",
                   help="step-numbered checkpoints kept beside the latest (default 3; 0 keeps only the latest)")
    g.add_argument("--save-every-minutes", type=nonnegative_float("--save-every-minutes"), default=None, metavar="M",
                   help="also write a checkpoint whenever M minutes of wall-clock time have passed (default 0: off)")
    g.add_argument("--skip-nonfinite", type=nonnegative_int("--skip-nonfinite"), default=None, metavar="N",
                   help="skip the update of up to N batches whose loss or gradient is not finite, counting them in "
                        "the log, before stopping (default 0: stop at the first)")
    add_form_options(g, legacy="boolean", what="the network and the loss (forward and backward)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the network (default off)")
    g.add_argument("--compile-backend", default=None, metavar="NAME",
                   help="torch.compile backend (default inductor; eager needs no compiler)")
    g.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="TF32 matmuls and convolutions on CUDA (default on)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="deterministic kernels (torch.use_deterministic_algorithms): --resume bit-exact on CUDA too, "
                        "at some speed (CPU runs are deterministic anyway) (default off)")
    g.add_argument("--loader", choices=("auto", "memory", "streaming"), default=None,
                   help="batches from a resident tensor (memory) or a DataLoader (streaming); auto streams data "
                        "that is not in memory (default auto); both give identical batches")
    g.add_argument("--workers", type=nonnegative_int("--workers"), default=None, metavar="N",
                   help="DataLoader worker processes of the streaming loader (default 0)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="also log to RUN_DIR/tensorboard (needs the tensorboard package) (default off)")


def loop_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The loop options as {field: value}, None where not given (``UsageError`` for ``--precision bf16`` where
    the device has no fast bf16)."""
    check_form(args, getattr(args, "device", None) or "cpu")
    return {**{name: getattr(args, name, None) for name in LOOP_OPTIONS}, **form_names(args, default=False)}


def train_with_progress(train_fn: Callable[..., Any], config: Any, run_dir: Any, args: argparse.Namespace,
                        command: str) -> Any:
    """``train_fn(config, run_dir, resume=, overwrite=, resume_changes=, on_step=, on_start=)`` under a progress
    bar named ``command`` (counting from the run's first step of this session); returns what ``train_fn`` returns.

    On ``--resume`` the stored run continues with ``--steps``, ``--device`` and the loop options that were given.
    """
    bar = progress(args.steps, command, args.no_progress)

    def on_step(step: int, loss: float) -> None:
        bar.update(step - bar.n)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_start(trainer) -> None:
        bar.n = bar.last_print_n = bar.initial = trainer.step  # steps/s and time left count this session only
        bar.refresh()

    resume_changes = {"steps": args.steps, "device": args.device, **loop_changes(args)}
    with bar:
        return train_fn(config, run_dir, resume=args.resume, overwrite=args.overwrite, resume_changes=resume_changes,
                        on_step=on_step, on_start=on_start)
