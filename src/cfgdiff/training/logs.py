"""The run's logs: ``loss.jsonl`` (always) and TensorBoard events (``--tensorboard``), written by rank 0.

``loss.jsonl`` holds one JSON object per line: a log line every ``log_every`` steps,
``{"step", "loss", "lr", "steps_per_sec", "examples_per_sec", "skipped"}`` (``loss`` is the mean over the
interval's updated steps, ``skipped`` the run's count of non-finite batches so far), and event lines
``{"event": "resume" | "interrupted" | "skipped_nonfinite", "step", ...}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TENSORBOARD_HINT = "--tensorboard needs the tensorboard package: pip install 'cfgdiff[tensorboard]'"


def require_tensorboard() -> None:
    """Raise ValueError (one line) when TensorBoard logging cannot work here."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ValueError(TENSORBOARD_HINT) from None


class RunLog:
    """Appends to the JSONL log (flushed per line) and mirrors scalars to TensorBoard when asked."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        self._file = open(path, "a")  # noqa: SIM115 - closed in close()
        self._writer = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(tensorboard_dir))

    def write(self, entry: dict[str, Any]) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in entry.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._writer is not None and "event" not in entry:
            for key in ("loss", "lr", "steps_per_sec", "examples_per_sec", "skipped"):
                if key in entry:
                    self._writer.add_scalar(f"train/{key}", entry[key], entry["step"])
            self._writer.flush()

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()
