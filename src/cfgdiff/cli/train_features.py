"""``cfgdiff train-features``: the clean-image classifier whose features give FID and whose softmax gives IS."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cfgdiff.cli.arguments import UsageError, device, output_path, positive_float, positive_int
from cfgdiff.cli.data_options import add_data_options, data_spec_from_args
from cfgdiff.cli.training_options import add_loop_options, loop_changes, train_with_progress

EXIT_OK = 0


def add_parser(sub) -> None:
    p = sub.add_parser("train-features", help="train the feature classifier behind FID and IS for any image data",
                       description="Train a clean-image classifier on the training split of the data; its "
                                   "penultimate features give FID and its softmax IS ('FID (NAME-classifier "
                                   "features)'). Reports its held-out test accuracy and writes "
                                   "RUN_DIR/features.safetensors, for 'cfgdiff eval RUN --features RUN_DIR'.")
    add_data_options(p, data_help="image data: digits, a path (format found from its content), or hf:PATH "
                                  "(default: digits)", hflip=False)  # flips are the loop's option
    p.add_argument("--run-dir", type=output_path("--run-dir", directory=True),
                   default=None, help="run directory (default runs/DATA-features)")
    p.add_argument("--name", default=None,
                   help="the data's name in metric names, 'FID (NAME-classifier features)' (default: the data "
                        "set's name)")
    p.add_argument("--steps", type=positive_int("--steps"), default=3000, help="optimizer steps (default 3000)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=positive_float("--lr"), default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument("--width", type=positive_int("--width"), default=32,
                   help="channels of the first stage, doubling per stage up to 4x (default 32)")
    p.add_argument("--feature-dim", type=positive_int("--feature-dim"), default=None,
                   help="dimension of the penultimate features (default 64 up to 16 pixels a side, else 128)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N, mps, ... (default cpu)")
    p.add_argument("--resume", action="store_true", help="continue the feature classifier in --run-dir")
    p.add_argument("--overwrite", action="store_true", help="replace the feature classifier in --run-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_loop_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cfgdiff.data import DataSpec, load_dataset
    from cfgdiff.training.features import FeatureTrainConfig, network_config, train_features

    spec = data_spec_from_args(args, default="digits")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other")
    run_dir = args.run_dir if args.run_dir is not None else Path("runs") / f"{Path(spec.source).name}-features"
    extra = {"data_spec": spec.to_json()} if spec != DataSpec(source=spec.source) else {}
    config = FeatureTrainConfig(data=spec.source, **extra, name=args.name, steps=args.steps,
                                batch_size=args.batch_size, lr=args.lr, width=args.width,
                                feature_dim=args.feature_dim, seed=args.seed, device=args.device,
                                **{k: v for k, v in loop_changes(args).items() if v is not None})
    config.validate()
    if not args.resume:
        network_config(config, load_dataset(spec, "train"))  # vector data: one line before anything is written
    t0 = time.perf_counter()
    extractor, meta = train_with_progress(train_features, config, run_dir, args, "train-features")
    if not meta.get("is_main", True):
        return EXIT_OK
    if extractor is None:
        print(f"stopped by {meta.get('interrupted')} at step {meta['step']}; checkpoint written to {run_dir}; "
              f"resume with: cfgdiff train-features --run-dir {run_dir} --resume --steps {args.steps}")
        return EXIT_OK
    record = extractor.metadata
    print(f"held-out test accuracy {100 * record['test_accuracy']:.2f} % on {record['test_count']} test images "
          f"(training images: {100 * record['train_accuracy']:.2f} %); step {record['step']}, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"wrote {run_dir / 'features.safetensors'}: metrics 'FID ({extractor.name} features)' and "
          f"'IS ({record['data_name']} classifier)'; use: cfgdiff eval RUN --features {run_dir}")
    return EXIT_OK
