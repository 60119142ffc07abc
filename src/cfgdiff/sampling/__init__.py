"""Sampling over the eps_fn contract (imports core, guidance and runtime; never a network, trainer or face).

* ``solvers``: the samplers, pure functions over an eps_fn walking a log-SNR grid (``SAMPLERS``);
* ``generate``: the one chunk loop with per-sample noise streams, and the network options (autocast, ...);
* ``sharded``: the chunks split across torchrun's processes, gathered into the one-process order;
* ``pipeline``: ``GuidedRun``, the guided run every command samples through.
"""
