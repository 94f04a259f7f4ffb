"""Argument declarations more than one command shares: verb groups and the models to load."""

from __future__ import annotations

import argparse
import math


def verbs(sub, name: str, help: str, dest: str = "verb"):
    """``digits NAME VERB …``: a command whose verbs are added with :func:`verb`."""
    group = sub.add_parser(name, help=help)
    return group.add_subparsers(dest=dest, required=True, metavar="VERB")


def verb(group, name: str, func, help: str) -> argparse.ArgumentParser:
    """One verb of a group, run by ``func(args)``."""
    parser = group.add_parser(name, help=help)
    parser.set_defaults(func=func)
    return parser


def add_model_options(parser: argparse.ArgumentParser, default_runs: str) -> None:
    """``--run`` (repeatable), ``--tta`` and ``--device``: which trained runs answer, and how."""
    parser.add_argument(
        "--run",
        action="append",
        metavar="RUN_DIR",
        help=f"a run folder (repeat for an ensemble; default: {default_runs})",
    )
    parser.add_argument("--tta", type=int, default=0, help="shift-TTA: average over 1 + N shifts")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)"
    )


def device_of(args) -> str | None:
    """``--device`` as the Predictor takes it (None: cuda when available)."""
    return None if args.device == "auto" else args.device


def seconds_or_minutes(*, allow_zero: bool):
    """An argparse type for a duration: a finite number above zero (or zero when allowed), so
    that ``nan`` (a wait that never ends) and negative values stop at the parser."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            least = "zero or more" if allow_zero else "more than zero"
            raise argparse.ArgumentTypeError(f"expected a finite number, {least}; got {text!r}")
        return value

    return parse
