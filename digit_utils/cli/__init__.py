"""The `digits` command. Each stage module adds its own subcommands through ``register_cli``."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from digit_utils import __version__, atomic
from digit_utils.errors import DigitsError

# Modules that contribute subcommands; each defines register_cli(subparsers). Keep their
# top-level imports light: `digits data validate` should not pay for importing torch.
COMMAND_MODULES = [
    "digit_utils.cli.data",
    "digit_utils.cli.kaggle",
    "digit_utils.cli.pipeline",
    "digit_utils.cli.predict",
    "digit_utils.cli.runs",
    "digit_utils.cli.serve",
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


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """Warnings as one ``warning:`` line: the user needs the message, not our source line."""
    return f"warning: {message}\n"


def _save_traceback() -> Path | None:
    """Write the current exception's traceback to a temp file (atomically); None if we cannot."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.gettempdir()) / f"digits-traceback-{stamp}-{os.getpid()}.txt"
    try:
        return atomic.write_text(traceback.format_exc(), path)
    except OSError:
        return None


# What the user can do about an OSError the environment caused, by errno.
ACTIONABLE = {
    errno.ENOSPC: "free some space on that disk, or write elsewhere (DIGITS_OUTPUTS)",
    errno.EDQUOT: "free some of your quota there, or write elsewhere (DIGITS_OUTPUTS)",
    errno.EFBIG: "the file is over the file system's (or `ulimit -f`'s) size limit",
    errno.EROFS: "that file system is mounted read-only: write elsewhere (DIGITS_OUTPUTS)",
    errno.EACCES: "check the permissions of the path and its folders",
    errno.EPERM: "check the permissions of the path and its folders",
}


def _os_error(e: OSError) -> str:
    """An OSError with a file name, or one the user can act on (a full disk, a size limit, a
    read-only or forbidden place), is the environment's doing, not a bug: name the path, the
    reason and what to do."""
    where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    text = e.strerror or e.__class__.__name__
    if hint := ACTIONABLE.get(e.errno):
        text += f"; {hint}"
    return f"{where}: {text}" if e.filename is not None else text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s"
    )
    warnings.simplefilter("default")
    warnings.formatwarning = _warning_line
    try:
        return int(args.func(args) or 0)
    except DigitsError as e:
        print(f"error: {_cut(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.filename is None and e.errno not in ACTIONABLE:
            return _bug(e)
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # anything else is our bug: one line here, the traceback in a file
        return _bug(e)


def _cut(text: str, limit: int = 2000) -> str:
    """A message as long as a screen at most: what it echoes may be the user's megabytes."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def _bug(e: BaseException) -> int:
    saved = _save_traceback()
    where = f"full traceback in {saved}" if saved else "the traceback could not be saved"
    text = f"{e.__class__.__name__}: {e}".splitlines()[0]
    print(f"error: {text} (this is a bug in digit-utils; {where})", file=sys.stderr)
    return 1
