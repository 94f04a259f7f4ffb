"""The `digits` command. Each stage module adds its own subcommands through ``register_cli``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from . import __version__
from .errors import DigitsError

# Modules that contribute subcommands; each defines register_cli(subparsers). Keep their
# top-level imports light: `digits data validate` should not pay for importing torch.
COMMAND_MODULES = [
    "digit_utils.data_cli",
    "digit_utils.kaggle_cli",
    "digit_utils.pipeline_cli",
    "digit_utils.predict_cli",
    "digit_utils.runs_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digits", description="Kaggle Digit Recognizer: data, training, pipeline, submission."
    )
    parser.add_argument("--version", action="version", version=f"digit-utils {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s"
    )
    warnings.simplefilter("default")
    try:
        return int(args.func(args) or 0)
    except DigitsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
