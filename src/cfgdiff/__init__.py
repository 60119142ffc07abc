"""cfgdiff: classifier-free diffusion guidance (Ho & Salimans 2022) in continuous log-SNR time.

Modules, from the ground up: ``schedule`` and ``diffusion`` (the math), ``toy`` (an exact Gaussian-mixture
testbed), ``contract`` (the eps_fn contract), ``guidance`` and ``samplers`` (pure functions over an eps_fn),
``models`` (networks), ``data``, ``checkpoint``, ``training``, ``plotting``, ``cli``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(run_dir, *, ema: bool = True, device="cpu"):
    """The trained (EMA) denoiser of a run directory: an eps_fn module with ``num_classes`` and ``data_shape``."""
    from cfgdiff.training import load_model as _load_model

    return _load_model(run_dir, ema=ema, device=device)
