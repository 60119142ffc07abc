"""Choosing guidance by measurement: ``cfgdiff tune`` (imports evaluation, sampling, guidance and below).

* ``space``: what is searched (w, a method's parameters, the interval's bounds, the steps) as ``Range``s;
* ``objectives``: what is optimised, read from a scored sweep row (FID, KID, precision at a recall floor, fronts);
* ``study``: the Optuna study (TPE / NSGA-II, successive halving with N as the resource, RDB storage, re-scoring
  the winner on fresh seeds);
* ``report``: the trial table, the front plot, ``summary.json`` and ``report.html``.
"""
