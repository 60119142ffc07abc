"""The data options every command that reads data shares: ``add_data_options`` and ``data_spec_from_args``."""

from __future__ import annotations

import argparse
from pathlib import Path

from cfgdiff.cli.arguments import UsageError, checked, positive_int

# options that say how files are read: meaningless for the built-in data sets
_FILE_OPTIONS = {"data_format": "--data-format", "image_size": "--image-size", "channels": "--channels",
                 "class_names": "--class-names", "test_fraction": "--test-fraction",
                 "image_column": "--image-column", "label_column": "--label-column"}


def add_data_options(parser: argparse.ArgumentParser, *, default: str | None = "digits",
                     data_help: str | None = None, hflip: bool = True) -> None:
    """Add --data, --data-format, --image-size, --channels, --class-names, --test-fraction, --image-column,
    --label-column and (``hflip``) --hflip/--no-hflip to ``parser``.

    A training command whose loop options carry their own --hflip (``cfgdiff.cli.training_options``, the
    ``LoopConfig.hflip`` field) passes ``hflip=False``; ``DataSpec.hflip`` then stays None and the data set's
    default (``Dataset.hflip_default``) reaches the loop through it."""
    from cfgdiff.data import DATASETS, FORMATS

    group = parser.add_argument_group("data")
    group.add_argument("--data", default=None, metavar="DATA",
                       help=data_help or f"a built-in data set ({', '.join(sorted(DATASETS))}), a path (format found "
                       f"from its content), or hf:PATH (default: {default})")
    group.add_argument("--data-format", choices=FORMATS, default=None,
                       help="read DATA as this format instead of detecting it")
    group.add_argument("--image-size", type=positive_int("--image-size"), default=None, metavar="S",
                       help="resize the shorter side to S and crop the centre SxS (image folders, zips, hf; needed "
                            "when the images differ in size)")
    group.add_argument("--channels", type=int, choices=(1, 3), default=None,
                       help="1 (grayscale) or 3 (RGB); default: 1 when every image is grayscale, else 3")
    group.add_argument("--class-names", default=None, metavar="NAMES",
                       help="class names, for data that carries none (IDX, EDM zips, .npz): comma-separated, or a "
                            "text file with one name per line")
    group.add_argument("--test-fraction", type=checked("--test-fraction", float, lambda v: 0 < v < 1, "lie in (0, 1)"),
                       default=None, metavar="F",
                       help="held-out share for data without a test split (stratified by class, seed 0; default 0.1)")
    group.add_argument("--image-column", default=None, help="hf: the image column (default: found from the features)")
    group.add_argument("--label-column", default=None, help="hf: the label column (default: found from the features)")
    if hflip:
        group.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                           help="random horizontal flips in training (default: on for RGB data, off for grayscale)")
    parser.set_defaults(_data_default=default, _data_hflip=hflip)


def parse_class_names(text: str) -> tuple[str, ...]:
    """A text file with one name per line (blank lines ignored), else the comma-separated names in ``text``."""
    path = Path(text).expanduser()
    if path.is_file():
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--class-names: cannot read {path} ({err})") from None
        names = tuple(line.strip() for line in content.splitlines() if line.strip())
    else:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UsageError(f"--class-names: no names in {text!r}")
    if len(set(names)) != len(names):
        raise UsageError(f"--class-names: names must be distinct, got {', '.join(names)}")
    return names


def data_spec_from_args(args: argparse.Namespace, default: str | None = None):
    """The ``cfgdiff.data.DataSpec`` the data options ask for (``--data`` missing: ``default``, else the
    parser's). File options given with a built-in data set are a usage error (they would be ignored)."""
    from cfgdiff.data import DATASETS, DataSpec

    source = args.data if args.data is not None else (default or getattr(args, "_data_default", None) or "digits")
    given = {flag for dest, flag in _FILE_OPTIONS.items() if getattr(args, dest, None) is not None}
    flip = getattr(args, "hflip", None) if getattr(args, "_data_hflip", False) else None
    if source in DATASETS:
        if given:
            raise UsageError(f"{', '.join(sorted(given))} cannot be used with the built-in data set {source}")
        return DataSpec(source=source, hflip=flip)
    values = {
        "format": args.data_format, "image_size": args.image_size, "channels": args.channels,
        "class_names": parse_class_names(args.class_names) if args.class_names is not None else None,
        "image_column": args.image_column, "label_column": args.label_column, "hflip": flip,
    }
    if args.test_fraction is not None:
        values["test_fraction"] = args.test_fraction
    return DataSpec(source=source, **values)
