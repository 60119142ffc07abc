"""cfgdiff: classifier-free diffusion guidance (Ho & Salimans 2022) in continuous log-SNR time.

Folders are the layers, from the ground up (nothing lower imports anything higher; ``tests/test_layers.py``):
``core`` (schedule, diffusion math, the eps_fn contract, the exact Gaussian-mixture toy), ``runtime``
(checkpoint files, cache directory, process group) and ``models`` (networks), ``guidance`` and ``data``,
``sampling`` (solvers, chunked generation, the guided-run pipeline) and ``adapters``, ``training``,
``evaluation`` (sweeps, metrics, feature networks, plots, report pages), ``distillation``, and the two faces
``cli`` and ``serve``. The import paths of the earlier flat layout still work (``cfgdiff._compat``).
"""

from __future__ import annotations

from cfgdiff import _compat

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]

_compat.install()


def load_model(run_dir, *, ema: bool = True, device="cpu"):
    """The trained (EMA) denoiser of a run directory: an eps_fn module with ``num_classes`` and ``data_shape``."""
    from cfgdiff.training import load_model as _load_model

    return _load_model(run_dir, ema=ema, device=device)
