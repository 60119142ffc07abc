"""Training for a wall-clock budget (``cfgdiff train --time-budget 10m``): the step count fitted to the time.

The number of steps T decides the learning-rate schedule (warm-up, cosine decay to the floor at the last step),
so it is chosen before the first step and the run then trains exactly T steps:

1. ``calibrate``: a few *dry* steps (the forward and backward pass of a real batch, the gradient clip, and an
   AdamW step and EMA update on scratch copies of the parameters) are timed; the generator, the batch stream
   and the gradients are put back, so the run's steps are those of ``--steps T``;
2. ``plan``: T = step + floor((deadline − now − reserve) / t_step), where t_step adds a checkpoint's share
   (checkpoint seconds / checkpoint_every) to a step's time and the reserve holds the final checkpoint and a
   margin (``MARGIN`` of the budget);
3. ``check`` after each real step: once ``REPLAN_AFTER`` real steps have run, T is fitted once more to their
   measured rate (the dry steps may miss caches, allocator warm-up, other processes), and again at each share of
   the run in ``REPLAN_SHARES``, to the rate since the last fit (the first real steps run slower than the steady
   state: a 10-minute Fashion-MNIST run fitted only at step 20 ended 13 % early); and if the deadline comes
   before T anyway, the run ends at that step (T is set to it, so the last checkpoint is a finished run; its
   cosine then ends above the floor).

The warm-up follows the first T: ``warmup_for(T, preset_warmup)`` unless the user set it (``warmup_explicit``);
a later refit changes T only, so the recorded warm-up is the one the run had.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from cfgdiff.training.config import warmup_for

MARGIN = 0.03  # share of the budget kept free for the end of the run (last checkpoint, log, exit)
EXIT_SECONDS = 1.5  # kept free besides: the interpreter's exit after the run (torch's teardown)
CALIBRATION_SHARE = 0.02  # dry steps run until this share of the budget has passed ...
CALIBRATION_STEPS = (3, 30)  # ... but at least 3 and at most 30 timed dry steps (after one untimed)
REPLAN_AFTER = 20  # real steps after which T is fitted once more to the measured rate
REPLAN_SHARES = (0.25, 0.5, 0.75)  # and again at these shares of the planned run, to the rate since the last fit


@dataclass
class TimeBudget:
    """A wall-clock budget for one training session; ``chosen`` records what was decided (for the log)."""

    seconds: float  # the budget
    started: float  # time.monotonic() when it started (the command's start: data loading counts)
    preset_warmup: int | None = None  # the warm-up the preset asks for (cut to WARMUP_FRACTION of T)
    warmup_explicit: bool = False  # the user set the warm-up: keep it
    chosen: dict[str, Any] = field(default_factory=dict)
    _t_step: float = 0.0
    _t_save: float = 0.0
    _fits: int = 0  # refits done (the first after REPLAN_AFTER steps, then one per share of REPLAN_SHARES)
    _start_step: int = 0  # the session's first real step (the shares count from it)
    _first_step: int = 0  # where the rate of the next refit is measured from
    _t_first: float = 0.0

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def left(self) -> float:
        """Seconds of the budget left."""
        return self.deadline - time.monotonic()

    def _set_steps(self, trainer, steps: int, *, warmup: bool = False) -> None:
        """Set the total (both configs of the trainer); ``warmup``: also the warm-up (before the first step only,
        so the recorded warm-up is the one the run had)."""
        steps = max(int(steps), trainer.step + (0 if self.chosen.get("stopped_early_at") else 1))
        configs = {id(trainer.loop): trainer.loop, id(trainer.config): trainer.config}
        for config in configs.values():
            config.steps = steps
            if warmup and not self.warmup_explicit and self.preset_warmup is not None:
                config.warmup_steps = warmup_for(steps, self.preset_warmup)
        self.chosen.update(steps=steps, warmup_steps=trainer.loop.warmup_steps)

    def _fit(self, trainer) -> int:
        loop = trainer.loop
        per_step = self._t_step + self._t_save / max(loop.checkpoint_every, 1)
        usable = self.left() - 2.0 * self._t_save - MARGIN * self.seconds - EXIT_SECONDS
        return trainer.step + max(1, math.floor(usable / max(per_step, 1e-9)))

    def plan(self, trainer, *, save_seconds: float) -> None:
        """Calibrate (dry steps) and set the run's total steps and warm-up; ``save_seconds``: a checkpoint's time."""
        self._t_save = float(save_seconds)
        self._t_step = calibrate(trainer, until=time.monotonic() + CALIBRATION_SHARE * self.seconds)
        self._set_steps(trainer, self._fit(trainer), warmup=True)
        self.chosen.update(budget_s=self.seconds, step_seconds=self._t_step, checkpoint_seconds=self._t_save,
                           planned_at=time.monotonic() - self.started)
        self._start_step = self._first_step = trainer.step
        self._t_first = time.monotonic()

    def _next_fit_step(self, trainer) -> int | None:
        """The step of the next refit: REPLAN_AFTER real steps in, then each share of the planned run."""
        if self._fits == 0:
            return self._start_step + REPLAN_AFTER
        if self._fits > len(REPLAN_SHARES):
            return None
        share = REPLAN_SHARES[self._fits - 1]
        return max(self._first_step + REPLAN_AFTER,
                   self._start_step + math.ceil(share * (trainer.loop.steps - self._start_step)))

    def check(self, trainer) -> bool:
        """After a real step: refit T to the rate measured since the last fit (after REPLAN_AFTER steps, then at
        REPLAN_SHARES of the run); True when the deadline ends the run here."""
        at = self._next_fit_step(trainer)
        if at is not None and trainer.step >= at and trainer.step < trainer.loop.steps:
            self._fits += 1
            now = time.monotonic()
            measured = (now - self._t_first) / max(trainer.step - self._first_step, 1)
            self._first_step, self._t_first = trainer.step, now  # the next fit measures from here
            if measured > 0 and abs(measured - self._t_step) > 0.02 * self._t_step:
                self._t_step = measured
                self._set_steps(trainer, self._fit(trainer))
                self.chosen.update(step_seconds=measured, replanned_at_step=trainer.step)
        reserve = self._t_step + 2.0 * self._t_save + 0.5 * MARGIN * self.seconds + EXIT_SECONDS
        if trainer.step < trainer.loop.steps and self.left() < reserve:
            self.chosen["stopped_early_at"] = trainer.step
            self._set_steps(trainer, trainer.step)  # the deadline: this step is the run's last
            return True
        return False


def calibrate(trainer, *, until: float) -> float:
    """Seconds per optimizer step, from dry steps that leave the run's state as it was (see the module docstring).

    One untimed dry step first (allocations, kernel selection), then timed ones until ``until`` (time.monotonic)
    within ``CALIBRATION_STEPS``; returns the median time of the timed ones.
    """
    generator_state = trainer.generator.get_state()
    consumed = trainer.stream.consumed
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    scratch = [p.detach().clone().requires_grad_(True) for p in params]
    ema_scratch = [p.detach().clone() for p in params]
    from cfgdiff.training.trainer import make_adamw

    optimizer = make_adamw(scratch, lr=trainer.loop.lr, weight_decay=trainer.loop.weight_decay)
    times: list[float] = []
    lo, hi = CALIBRATION_STEPS
    try:
        _dry_step(trainer, params, scratch, ema_scratch, optimizer)  # untimed: allocations, kernel selection
        while len(times) < hi and (len(times) < lo or time.monotonic() < until):
            t0 = time.perf_counter()
            _dry_step(trainer, params, scratch, ema_scratch, optimizer)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
            times.append(time.perf_counter() - t0)
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.generator.set_state(generator_state)
        trainer.stream.load_state(consumed)
        del optimizer, scratch, ema_scratch
    times.sort()
    return times[len(times) // 2]


def _dry_step(trainer, params, scratch, ema_scratch, optimizer) -> None:
    """What ``Trainer.train_step`` does, with the update and the EMA applied to scratch copies."""
    trainer.net.train()
    micro = trainer.stream.next_step()
    trainer.optimizer.zero_grad(set_to_none=True)
    for batch in micro:
        loss = trainer.loss_on_batch(batch.x, batch.labels).float()
        (loss / len(micro)).backward()
    float(loss.detach())  # the loop reads the loss every step (a device sync)
    clip = trainer.loop.grad_clip if trainer.loop.grad_clip > 0 else float("inf")
    torch.nn.utils.clip_grad_norm_(params, clip)
    for s, p in zip(scratch, params, strict=True):
        s.grad = p.grad
    optimizer.step()
    torch._foreach_lerp_(ema_scratch, [s.detach() for s in scratch], 1.0 - trainer.loop.ema_decay)
    for s in scratch:
        s.grad = None
