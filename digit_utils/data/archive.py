"""Unzipping the competition archive: all or nothing, never over a user's files.

A zip given as the data path is extracted into a cache folder named after the archive's
fingerprint, so that it never touches ``data/raw/`` and a second run reuses the extraction.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from digit_utils.errors import DataError


def _members(zf: zipfile.ZipFile, archive: Path, required: Sequence[str]) -> set[str]:
    """The archive's top-level names; raises when a required one is missing (or nested)."""
    names = set(zf.namelist())
    missing = [f for f in required if f not in names]
    if not missing:
        return names
    nested = sorted({n.rsplit("/", 1)[0] for n in names if n.rsplit("/", 1)[-1] in missing})
    where = f"; it holds them under {nested[0]}/, unzip it and give that folder" if nested else ""
    raise DataError(f"archive lacks {', '.join(missing)} at its top level{where}", file=archive)


READABLE = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _check_members(zf: zipfile.ZipFile, archive: Path, members: Sequence[str]) -> None:
    """Read each member through once: encrypted, unreadable (deflate64, AES) or corrupt ones
    are named before anything is extracted."""
    for name in members:
        info = zf.getinfo(name)
        if info.flag_bits & 0x1:
            raise DataError(
                f"archive member {name} is encrypted; unzip it with its password and give the "
                "folder",
                file=archive,
            )
        if info.compress_type not in READABLE:
            raise DataError(
                f"archive member {name} uses compression method {info.compress_type}, which "
                "Python cannot read; unzip it with another tool (or re-zip it with deflate)",
                file=archive,
            )
        try:
            with zf.open(info) as fh:
                while fh.read(1 << 22):
                    pass
        except zipfile.BadZipFile as e:
            why = "CRC mismatch" if "CRC" in str(e) else str(e)
            raise DataError(f"archive member {name} is corrupt ({why})", file=archive) from None
        except (zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
            raise DataError(f"archive member {name} is corrupt ({e})", file=archive) from None


def same_file(info: zipfile.ZipInfo, path: Path) -> bool:
    """True when ``path`` already holds this archive member (same size and CRC-32)."""
    if not path.is_file() or path.stat().st_size != info.file_size:
        return False
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc == info.CRC


def extract(
    archive: str | Path, dest: Path, required: Sequence[str], wanted: Sequence[str]
) -> Path:
    """Unzip the ``wanted`` members into ``dest`` (all or nothing) and return ``dest``.

    Members must sit at the archive's top level; other members (and any path-traversal names)
    are ignored. A file in ``dest`` that differs from its member is never overwritten.
    """
    archive = Path(archive)
    if archive.is_dir():
        raise DataError("is a folder, not a zip archive", file=archive)
    if not archive.is_file():
        raise DataError("zip archive not found", file=archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = _members(zf, archive, required)
            members = [f for f in wanted if f in names]
            _check_members(zf, archive, members)
            clash = [
                f
                for f in members
                if (dest / f).exists() and not same_file(zf.getinfo(f), dest / f)
            ]
            if clash:
                raise DataError(
                    f"will not overwrite {', '.join(clash)} in {dest} with the archive's "
                    "different copy; move them away or give the zip as the data path",
                    file=archive,
                )
            dest.mkdir(parents=True, exist_ok=True)
            todo = [f for f in members if not (dest / f).exists()]
            with tempfile.TemporaryDirectory(dir=dest) as tmp:
                zf.extractall(tmp, members=todo)
                for f in todo:
                    os.replace(Path(tmp) / f, dest / f)
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DataError(f"not a valid zip archive ({e})", file=archive) from None
    return dest


def extract_cached(
    archive: str | Path, cache_root: Path, key: str, required: Sequence[str], wanted: Sequence[str]
) -> Path:
    """Unzip into ``cache_root/<key>/`` once, where ``key`` is the archive's fingerprint.

    The folder appears complete or not at all (extracted beside it, then renamed), so an
    interrupted extraction is simply redone.
    """
    dest = cache_root / key
    if cache_root.is_dir():
        sweep_stale(cache_root)
    if dest.is_dir():
        return dest
    created = [p for p in (cache_root.parent, cache_root) if not p.exists()]
    cache_root.mkdir(parents=True, exist_ok=True)
    try:
        _extract_into(archive, cache_root, dest, required, wanted)
    except BaseException:
        for folder in reversed(created):  # a failed extraction leaves no trace behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return dest


STALE_AFTER = 24 * 3600  # seconds: a temp folder without a pid in its name is stale after this


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's; a number no pid can be
        return pid > 0
    return True


def sweep_stale(cache_root: Path) -> None:
    """Remove temp folders (``.<key>.<pid>.<random>``) left by extractions whose process was
    killed; a live process's are kept (its pid is in the name)."""
    for tmp in cache_root.glob(".*"):
        parts = tmp.name.split(".")  # ['', key, pid, random]
        if not tmp.is_dir() or tmp.is_symlink() or len(parts) not in (3, 4):
            continue
        stale = False
        if len(parts) == 4 and parts[2].isdigit():
            stale = not _alive(int(parts[2]))
        else:  # an older layout without the pid
            with contextlib.suppress(OSError):
                stale = time.time() - tmp.stat().st_mtime > STALE_AFTER
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)


def _extract_into(archive, cache_root: Path, dest: Path, required, wanted) -> None:
    prefix = f".{dest.name}.{os.getpid()}."  # the pid lets the next run sweep it if we die
    with tempfile.TemporaryDirectory(dir=cache_root, prefix=prefix) as tmp:
        extract(archive, Path(tmp) / "files", required, wanted)
        os.chmod(Path(tmp) / "files", 0o755)  # TemporaryDirectory makes 0700
        try:
            os.replace(Path(tmp) / "files", dest)
        except OSError:  # another process finished the same extraction first
            if not dest.is_dir():
                raise
