"""Compare two output folders of scripts/same_outputs.sh: every .npz array equal bit for bit, every results.json
equal except its wall-clock fields (``seconds``, ``seconds_per_sample``). Exit 1 on any difference.

    python scripts/compare_outputs.py OUT_A OUT_B
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

TIMINGS = ("seconds", "seconds_per_sample")


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def main(a: Path, b: Path) -> int:
    differences = 0
    npz = sorted(a.rglob("*.npz"))
    for path in npz:
        with np.load(path) as x, np.load(b / path.relative_to(a)) as y:
            bad = [k for k in x.files if k not in y.files or not np.array_equal(x[k], y[k])]
        differences += len(bad)
        print(f"{path.relative_to(a)}: {'equal, bit for bit' if not bad else 'DIFFERENT: ' + ', '.join(bad)}")
    results = sorted(a.rglob("results.json"))
    for path in results:
        x = _without_timings(json.loads(path.read_text()))
        y = _without_timings(json.loads((b / path.relative_to(a)).read_text()))
        differences += x != y
        print(f"{path.relative_to(a)}: {'equal (timings excluded)' if x == y else 'DIFFERENT'}")
    if not npz and not results:
        print(f"nothing to compare in {a}")
        return 1
    print(f"{len(npz)} .npz and {len(results)} results.json compared: {differences} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
