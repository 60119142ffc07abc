"""Where cfgdiff keeps what it computes once and reuses: feature statistics, decoded data sets.

One rule for every cache: ``$CFGDIFF_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/cfgdiff``, else
``~/.cache/cfgdiff``. Each user of the cache takes a sub-folder of it (``data/`` for decoded images). This module
imports nothing of the package, so metrics and data can both use it without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$CFGDIFF_CACHE_DIR``, else ``$XDG_CACHE_HOME/cfgdiff``, else ``~/.cache/cfgdiff``."""
    if os.environ.get("CFGDIFF_CACHE_DIR"):
        return Path(os.environ["CFGDIFF_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cfgdiff"
