"""Atomic file writes (a temp file in the same folder, then a rename) and the one file hash.

A crash, a kill or an exception mid-write leaves the previous file intact and no half file behind.
Every file the package writes goes through here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO], Any], mode: str = "w") -> Path:
    """Call ``write(fh)`` on a temp file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline=None if "b" in mode else "") as fh:
            write(fh)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an ordinary output file is world-readable
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a failed write (a full disk) names no file: say which one
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda fh: fh.write(text))


def write_json(obj: Any, path: str | Path) -> Path:
    """Indented JSON; values JSON does not know (paths, numpy scalars) are written as text."""
    return write_text(json.dumps(obj, indent=2, default=str) + "\n", path)


def write_csv(frame, path: str | Path) -> Path:
    """A pandas DataFrame as CSV without its index."""
    return atomic_write(path, lambda fh: frame.to_csv(fh, index=False))


def file_hash(path: str | Path) -> str:
    """A short blake2b hash of a file's bytes: cache keys, run-folder manifests, submissions."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
