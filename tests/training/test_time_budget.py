"""The time budget's refits (cfgdiff.training.budget): a run whose steps speed up after the first ones is refitted
at each share of the run, so it ends near its deadline instead of where the first fit put it."""

from types import SimpleNamespace

from cfgdiff.training import budget as budget_module
from cfgdiff.training.budget import EXIT_SECONDS, MARGIN, REPLAN_AFTER, REPLAN_SHARES, TimeBudget


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _trainer(steps):
    loop = SimpleNamespace(steps=steps, warmup_steps=0, checkpoint_every=10**9)
    return SimpleNamespace(step=0, loop=loop, config=loop)


def test_refits_follow_a_rate_that_changes_after_the_first_steps(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(budget_module.time, "monotonic", clock)
    seconds, slow, fast = 100.0, 0.4, 0.3  # the first 40 steps at 0.4 s, then 0.3 s: the steady rate
    tb = TimeBudget(seconds=seconds, started=0.0)
    trainer = _trainer(steps=1)
    monkeypatch.setattr(budget_module, "calibrate", lambda trainer, until: slow)
    tb.plan(trainer, save_seconds=0.0)
    first_total = trainer.loop.steps
    assert first_total == int((seconds - MARGIN * seconds - EXIT_SECONDS) / slow)
    ended = None
    while trainer.step < trainer.loop.steps:
        trainer.step += 1
        clock.now += slow if trainer.step <= 40 else fast
        if tb.check(trainer):
            ended = trainer.step
            break
    assert trainer.loop.steps > first_total * 1.2  # refitted to the faster rate
    assert clock.now >= 0.9 * seconds  # ends within 10 % of the budget ...
    assert clock.now <= seconds  # ... and before it
    assert ended is None or ended == trainer.loop.steps
    assert tb._fits == 1 + len(REPLAN_SHARES) and REPLAN_AFTER < 40
