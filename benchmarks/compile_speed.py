"""What ``--compile`` buys on this machine (run by hand, alone on the machine, not a test):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/compile_speed.py --threads 2 --out reports/compile_speed.md
    .venv/bin/python benchmarks/compile_speed.py --quick --out /tmp/compile_speed.md   # checks it runs

Per preset network (``peak_share.NETWORKS``, default the 28×28 ``small`` and digits networks) and per precision
(fp32 and, where the hardware has fast bf16, bf16; contiguous layout), three things for sampling (one guided
network call of 2B rows, B = ``cfgdiff sample``'s default chunk) and for training (one step of Algorithm 1's loss,
forward + backward + AdamW, at the preset's batch):

* the eager network's time per call;
* the compiled network's time per call, once compiled (``torch.compile``, inductor), and so the speed-up;
* the first call's time in a **cold** process (an empty inductor cache: the compilation itself) and in a **warm**
  one (a second process on the same cache directory, as a second ``cfgdiff`` run with ``--compile`` is), and so
  how many calls the compilation takes to pay back.

Every measurement runs in a child process of its own (a fresh Python, as a new command would be), with the
inductor cache under a temporary ``CFGDIFF_CACHE_DIR`` per network and form: the first child compiles into it,
the second finds it filled. Writes ``--out`` (Markdown) and the figures as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_share import NETWORKS, preset_network, sampling_row, training_row  # noqa: E402  (beside this script)

import cfgdiff  # noqa: E402
from cfgdiff.runtime import precision  # noqa: E402
from cfgdiff.runtime.precision import NetworkForm  # noqa: E402


def child(network: str, form: NetworkForm, *, compiled: bool, repeats: int, quick: bool) -> dict[str, Any]:
    """One process's measurement: sampling and training rows of ``network`` in ``form``."""
    shape = NETWORKS[network][0]
    config, chunk, batch, net = preset_network(network, quick=quick)
    sampling = sampling_row(net, shape, 2 * chunk, form, compiled=compiled, repeats=repeats)
    training = training_row(config, shape, batch, form, compiled=compiled, repeats=repeats)
    return {"sampling": sampling, "training": training}


def run_child(args: argparse.Namespace, network: str, form: NetworkForm, *, compiled: bool,
              cache_dir: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "--networks", network, "--precision", form.precision]
    command += ["--compile"] if compiled else []
    command += ["--quick"] if args.quick else []
    command += ["--threads", str(args.threads)] if args.threads is not None else []
    env = {**os.environ, "CFGDIFF_CACHE_DIR": str(cache_dir)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # cfgdiff puts it under CFGDIFF_CACHE_DIR
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({network}, {form.name}, compiled={compiled}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Markdown report path (JSON beside it)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny batches, one network: checks the script runs")
    parser.add_argument("--networks", default="28x28 small,digits 8x8 base",
                        help="comma-separated subset of peak_share's networks")
    parser.add_argument("--precision", default=None, help="fp32 or bf16 (default: fp32, and bf16 where fast)")
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 5
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    if args.child:
        print(json.dumps(child(networks[0], NetworkForm(args.precision or "fp32"), compiled=args.compile,
                               repeats=repeats, quick=args.quick)))
        return
    if args.out is None:
        parser.error("--out is required")
    if args.quick:
        networks = networks[:1]
    precisions = [args.precision] if args.precision else (
        ["fp32", "bf16"] if precision.bf16_supported("cpu") else ["fp32"])
    model, flags = precision.cpu_info()
    machine = {"cpu": model, "bf16_flags": sorted(flags & set(precision.CPU_BF16_FLAGS)),
               "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
               "cfgdiff": cfgdiff.__version__, "python": platform.python_version(), "quick": args.quick}
    t_start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine, "rows": []}
    for network in networks:
        for name in precisions:
            form = NetworkForm(name)
            with tempfile.TemporaryDirectory(prefix="cfgdiff-compile-") as cache:
                eager = run_child(args, network, form, compiled=False, cache_dir=Path(cache))
                cold = run_child(args, network, form, compiled=True, cache_dir=Path(cache))
                warm = run_child(args, network, form, compiled=True, cache_dir=Path(cache))
            for part in ("sampling", "training"):
                e, c, h = eager[part]["seconds"], cold[part]["seconds"], warm[part]["seconds"]
                compile_cold = cold[part]["first_call_seconds"] - c
                compile_warm = warm[part]["first_call_seconds"] - h
                saved = e - min(c, h)
                results["rows"].append({
                    "network": network, "precision": name, "part": part,
                    "eager_ms": e * 1e3, "compiled_ms": min(c, h) * 1e3, "speedup": e / min(c, h),
                    "compile_cold_s": compile_cold, "compile_warm_s": compile_warm,
                    "calls_to_pay_back_cold": compile_cold / saved if saved > 0 else None,
                    "calls_to_pay_back_warm": compile_warm / saved if saved > 0 else None,
                    "gflop_per_call": eager[part]["flops"] / 1e9,
                    "process_seconds_cold": cold["process_seconds"], "process_seconds_warm": warm["process_seconds"],
                })
    results["seconds"] = time.perf_counter() - t_start
    lines = ["# What `--compile` buys on this machine", "",
             f"- machine: {model}; bf16 flags {machine['bf16_flags'] or 'none'}; {machine['threads']} threads; "
             f"torch {torch.__version__}" + (" (--quick: tiny sizes, figures meaningless)" if args.quick else ""),
             f"- command: `{' '.join(['python', 'benchmarks/compile_speed.py', *sys.argv[1:]])}` "
             f"({results['seconds']:.0f} s)", "",
             "Sampling: one guided network call of 2B rows; training: one step (forward, backward, AdamW). "
             "Each time is the fastest of up to 5 calls after warm-up; compile time = the first call minus one "
             "compiled call, in a fresh process with an empty inductor cache (cold) and in a second process on "
             "the filled cache (warm). Pay-back: the calls the compile time equals at the time saved per call.",
             "",
             "| network | precision | part | eager ms | compiled ms | speed-up | compile s (cold) | "
             "compile s (warm) | calls to pay back (cold / warm) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        pay = ("never (not faster)" if row["calls_to_pay_back_cold"] is None else
               f"{row['calls_to_pay_back_cold']:.0f} / {row['calls_to_pay_back_warm']:.0f}")
        lines.append(f"| {row['network']} | {row['precision']} | {row['part']} | {row['eager_ms']:.1f} | "
                     f"{row['compiled_ms']:.1f} | ×{row['speedup']:.2f} | {row['compile_cold_s']:.1f} | "
                     f"{row['compile_warm_s']:.1f} | {pay} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
