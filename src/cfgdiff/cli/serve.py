"""``cfgdiff serve``: the live guidance explorer on a local web page (standard-library HTTP server)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from cfgdiff.cli.arguments import UsageError, checked, device, positive_int
from cfgdiff.cli.model_source import add_model_source_options, load_model_source
from cfgdiff.cli.network_options import add_network_options, network_options

EXIT_OK = 0


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="live explorer: a local web page where dragging w redraws a grid of samples",
                       description="Serve a web page on this machine where you pick classes, sampler, steps and "
                                   "guidance method and drag the guidance weight w; the grid is redrawn from the "
                                   "same per-sample seeds, with its time and NFE. Listens on 127.0.0.1 (this "
                                   "machine only) unless --host says otherwise. Stop with Ctrl+C.")
    add_model_source_options(p)  # RUN_DIR, or --diffusers DIR [--null-label N]
    p.add_argument("--port", type=checked("--port", int, lambda v: 0 <= v <= 65535, "lie in [0, 65535]"),
                   default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the "
                        "explorer, unauthenticated, to every machine that can reach this one)")
    p.add_argument("--max-samples", type=positive_int("--max-samples"), default=100,
                   help="most samples (classes x per class) one request may ask for (default 100)")
    p.add_argument("--max-steps", type=positive_int("--max-steps"), default=256,
                   help="most sampling steps one request may ask for (default 256)")
    p.add_argument("--threads", type=positive_int("--threads"), default=None,
                   help="torch CPU threads for sampling (default: torch's own choice)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    add_network_options(p)  # --precision, --memory-format, --compile
    p.add_argument("--log", action="store_true", help="print one line per HTTP request on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cfgdiff.serve import Explorer, ExplorerServer, Limits, is_loopback

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    net_options = network_options(args)  # an unavailable bf16: one line, before any work
    source = load_model_source(args, ema=not args.raw_weights, device=args.device)  # a run or --diffusers DIR

    def sampler_options(sampler: str) -> dict:  # the source's (trained range, decode) and the network's form
        options = dict(source.sampler_options(sampler))
        if args.precision is not None:
            options.pop("autocast", None)  # the precision asked for beats a diffusers source's bf16 on CUDA
        return {**options, **net_options}

    explorer = Explorer(source.eps_fn, data_shape=source.data_shape, image_shape=source.image_shape,
                        name=str(source.home), class_names=source.class_names, x_bound=source.x_bound,
                        limits=Limits(max_samples=args.max_samples, max_steps=args.max_steps), device=args.device,
                        sampler_options=sampler_options, has_null_label=source.has_null_label)
    warm_w = "1" if source.has_null_label else "0"
    explorer.render(explorer.parse({"classes": "0", "n": "1", "steps": "1", "w": warm_w}))  # the first grid: fast
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.log else None
    try:
        server = ExplorerServer(explorer, host=args.host, port=args.port, log=log)
    except OSError as err:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err})") from None
    if not is_loopback(args.host):
        print(f"cfgdiff: warning: --host {args.host} exposes the explorer to other machines, without "
              "authentication; anyone who reaches it can make this machine sample", file=sys.stderr)
    stop = threading.Event()

    def on_signal(signum, frame):  # SIGINT (Ctrl+C) or SIGTERM: stop serving, finish the grid in progress
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        print(f"cfgdiff explorer for {source.description} at {server.url} (limits: {args.max_samples} samples, "
              f"{args.max_steps} steps per grid; Ctrl+C stops it)", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("cfgdiff explorer stopped", flush=True)
    return EXIT_OK
