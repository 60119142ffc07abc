"""The one counter of network evaluations (NFE): every guided run counts through it.

``CountingEpsFn`` wraps any callable of the contract's shape ``f(z, logsnr, labels)`` (an eps_fn, a guide network,
a classifier's ``log_prob_fn``) and counts its calls and rows. ``NFECounter`` holds the counters of one guided run
and sorts them into what a record reports:

* denoiser rows: the main network's and those of further denoisers a method calls (autoguidance's guide); one
  guided classifier-free step of B samples is one call of 2B rows, so NFE per sample counts it as 2;
* classifier rows: forward + backward passes of a noisy classifier (classifier guidance), reported apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cfgdiff.core.contract import call_eps_fn

RowFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CountingEpsFn:
    """Wraps ``fn(z, logsnr, labels)`` and counts its calls (NFE) and rows; ``batch_sizes`` lists each call's rows.

    It is an eps_fn when ``fn`` is one (``num_classes`` and ``data_shape`` are passed through where ``fn`` has them).
    """

    def __init__(self, fn: RowFn) -> None:
        self.eps_fn = fn
        if hasattr(fn, "num_classes"):
            self.num_classes = fn.num_classes
        if hasattr(fn, "data_shape"):
            self.data_shape = fn.data_shape
        self.calls = 0
        self.rows = 0
        self.batch_sizes: list[int] = []

    def _count(self, z: torch.Tensor) -> None:
        self.calls += 1
        self.rows += z.shape[0]
        self.batch_sizes.append(int(z.shape[0]))

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._count(z)
        return self.eps_fn(z, logsnr, labels)

    def eps_at(self, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, *,
               host_logsnr: float) -> torch.Tensor:
        """The same call told the step's λ on the host, passed on to what it counts (``core.contract``)."""
        self._count(z)
        return call_eps_fn(self.eps_fn, z, logsnr, labels, host_logsnr=host_logsnr)  # type: ignore[arg-type]

    def reset(self) -> None:
        self.calls = 0
        self.rows = 0
        self.batch_sizes.clear()


class NFECounter:
    """The counters of one guided run: ``denoiser`` (counted as NFE) and ``classifier`` (classifier evaluations).

    ``wrap(fn, kind)`` returns a ``CountingEpsFn`` around ``fn`` and keeps it; ``reset()`` zeroes them all (a sweep
    resets before every w).
    """

    def __init__(self) -> None:
        self.counters: dict[str, list[CountingEpsFn]] = {"denoiser": [], "classifier": []}

    def wrap(self, fn: Any, kind: str = "denoiser") -> CountingEpsFn:
        if kind not in self.counters:
            raise ValueError(f"kind must be one of {', '.join(self.counters)}, got {kind!r}")
        counter = CountingEpsFn(fn)
        self.counters[kind].append(counter)
        return counter

    def rows(self, kind: str = "denoiser") -> int:
        """Rows evaluated so far by the networks of this kind."""
        return sum(c.rows for c in self.counters[kind])

    def reset(self) -> None:
        for counters in self.counters.values():
            for c in counters:
                c.reset()
