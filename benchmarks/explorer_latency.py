"""How live the explorer feels: time per grid request through HTTP, as the page sees it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/explorer_latency.py runs/digits --threads 1,2

Starts ``cfgdiff serve``'s server in-process on a free localhost port, warms it up, then asks for the same
grid (every class × --n samples, --sampler at --steps) at --requests different w, one after another as a slider
drag would, and prints the median, min and max of the request's wall time (sampling + PNG + JSON + HTTP) and
of the sampling alone, for each torch thread count. The load average before and after is printed too: other
work on the machine slows every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path


def measure(url: str, *, n: int, sampler: str, steps: int, requests: int):
    """(request wall times, sampling times, process CPU times, NFE per sample) over ``requests`` grids at
    distinct w. The CPU time (all threads of this process: server, sampling, client) is what the request costs
    the machine; on an otherwise idle machine with one torch thread it is also about the wall time."""
    walls, sampling, cpu, nfe = [], [], [], 0.0
    for i in range(requests):
        w = 0.5 + 0.5 * i
        t0, c0 = time.perf_counter(), time.process_time()
        with urllib.request.urlopen(f"{url}api/grid?w={w}&n={n}&sampler={sampler}&steps={steps}", timeout=120) as r:
            body = json.loads(r.read())
        walls.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        sampling.append(body["seconds"])
        nfe = body["nfe_per_sample"]
    return walls, sampling, cpu, nfe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--threads", default="1,2", help="torch thread counts to try (default 1,2)")
    parser.add_argument("--n", type=int, default=8, help="samples per class (default 8: a 10x8 grid on digits)")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--requests", type=int, default=7, help="grids per thread count (default 7)")
    args = parser.parse_args(argv)

    import torch

    from cfgdiff.serve import Explorer, ExplorerServer
    from cfgdiff.training import load_model

    model = load_model(args.run_dir)
    explorer = Explorer(model, data_shape=model.data_shape, name=str(args.run_dir),
                        class_names=getattr(model, "class_names", ()), x_bound=getattr(model, "x_bound", 1.0))
    print(f"# explorer latency: {args.run_dir}, {model.num_classes} classes x {args.n}, {args.sampler} "
          f"{args.steps} steps, {args.requests} requests per row (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| torch threads | request wall time, median (min-max) | sampling, median | CPU time, median | NFE/sample |")
    print("|---|---|---|---|---|")
    with ExplorerServer(explorer, port=0) as server:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            measure(server.url, n=args.n, sampler=args.sampler, steps=args.steps, requests=2)  # warm-up
            walls, sampling, cpu, nfe = measure(server.url, n=args.n, sampler=args.sampler, steps=args.steps,
                                                requests=args.requests)
            print(f"| {threads} | {statistics.median(walls) * 1e3:.0f} ms ({min(walls) * 1e3:.0f}-"
                  f"{max(walls) * 1e3:.0f}) | {statistics.median(sampling) * 1e3:.0f} ms | "
                  f"{statistics.median(cpu) * 1e3:.0f} ms | {nfe:g} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
