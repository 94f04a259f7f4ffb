"""The run record ``outputs/pipeline.json``: written by the runner, read by ``--status`` and by
the next run. Did the last run finish, fail, or die?

The runner records its process id, that process's start time and the host when it starts, and
rewrites the record atomically after each notebook, so a crash leaves an accurate record. A
record still saying "running" whose process is gone (killed with SIGKILL, a crashed machine, or
its pid now another process's) is read as interrupted, with what finished and what did not.

While it runs, the runner holds a lock on the outputs folder (:func:`lock`), so a second run on
the same outputs is refused, naming the first, instead of both writing there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from digit_utils import __version__, atomic, typed
from digit_utils.errors import DigitsError

RECORD = "pipeline.json"  # the run record, in the outputs folder
LOCK = "pipeline.lock"  # held by the running pipeline (flock: released when its process dies)


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from Linux's /proc); None when that
    cannot be read. A pid and its start time name one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name may hold spaces
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def lock(outputs: Path) -> Iterator[None]:
    """Hold the outputs folder for one pipeline run; DigitsError naming the holder (process,
    host, start time) when another run holds it."""
    if outputs.exists() and not outputs.is_dir():
        raise DigitsError(f"{outputs}: the outputs folder is a file, not a folder")
    outputs.mkdir(parents=True, exist_ok=True)
    fh = open(outputs / LOCK, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "a process that has not said which"
        fh.close()
        raise DigitsError(
            f"{outputs}: another pipeline run is using this outputs folder ({holder}); wait for "
            "it to finish or stop it, or give this run other outputs (DIGITS_OUTPUTS)"
        ) from None
    try:
        started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()} on {socket.gethostname()}, started {started}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock; the file stays (removing it would race the next run)


class Record:
    """The record of one pipeline run, saved to ``path`` at every change of status."""

    def __init__(self, path: Path, request, source, sources: dict[str, dict]):
        self.path = path
        self.t_start = time.perf_counter()
        profile = request.profile
        self.data: dict[str, Any] = {
            "status": "running",
            "profile": str(profile) if profile is not None else None,
            "overrides": dict(request.overrides),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "host": socket.gethostname(),
            "version": __version__,
            "seconds": 0.0,
            "data": source.to_dict(),
            "notebooks": [
                {
                    "name": p.stem,
                    "status": "pending" if p.stem in request.parameters else "skipped",
                    "seconds": None,
                    "parameters": request.parameters.get(p.stem, {}),
                    "metrics": None,
                    "data": sources.get(p.stem),
                    "notebook": str(p),
                    "executed": None,
                    "report": None,
                    "error": None,
                }
                for p in request.notebooks
            ],
        }
        self.entries = {e["name"]: e for e in self.data["notebooks"]}

    def save(self, status: str | None = None) -> None:
        if status:
            self.data["status"] = status
        self.data["seconds"] = round(time.perf_counter() - self.t_start, 2)
        atomic.write_json(self.data, self.path)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _runner_alive(pid: int, started: int | None) -> bool:
    """Is the recorded runner still this process (not a new one that got its pid)?"""
    if not process_alive(pid):
        return False
    now = process_start(pid)
    return started is None or now is None or now == started


REWRITTEN = "; the next `digits pipeline` run writes a new one (delete it to start afresh)"
# The fields --status reads, and their types (None: may be null).
SHAPE = {"status": str, "started": str | None, "pid": int | None, "host": str | None,
         "notebooks": list}  # fmt: skip
ENTRY_SHAPE = {"name": str, "status": str, "seconds": float | None}


def _check_shape(record, path: Path) -> None:
    """DigitsError naming the file and field when the record is not what the runner writes."""
    problem = typed.json_problem(record, SHAPE)
    for i, entry in enumerate(record.get("notebooks", []) if problem is None else []):
        problem = problem or typed.json_problem(entry, ENTRY_SHAPE, f"notebooks[{i}]")
    if problem:
        raise DigitsError(f"{path}: damaged pipeline record: {problem}{REWRITTEN}")


def read(path: Path) -> dict | None:
    """The record at ``path`` with its status corrected: "interrupted" for a dead runner."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DigitsError(f"{path}: cannot read the pipeline record ({e}){REWRITTEN}") from None
    _check_shape(record, path)
    if record.get("status") == "running":
        same_host = record.get("host") == socket.gethostname()
        pid = record.get("pid")
        if same_host and isinstance(pid, int) and not _runner_alive(pid, record.get("pid_start")):
            record["status"] = "interrupted"
            for entry in record.get("notebooks", []):
                if entry.get("status") == "running":
                    entry["status"] = "interrupted"
    return record


def describe(record: dict | None, path: Path) -> str:
    """A few lines a person reads: overall status, then each notebook's."""
    if record is None:
        return f"no pipeline run recorded ({path} does not exist)"
    status = record.get("status", "?")
    head = f"pipeline {status}: started {record.get('started', '?')}"
    if record.get("pid"):
        head += f" by process {record['pid']} on {record.get('host', '?')}"
    if status == "running":
        head += " (still running)"
    elif status == "interrupted":
        head += " (that process is gone: killed or crashed)"
    lines = [head]
    for entry in record.get("notebooks", []):
        seconds = f" in {entry['seconds']:.0f} s" if entry.get("seconds") is not None else ""
        lines.append(f"  {entry.get('name', '?'):<26} {entry.get('status', '?')}{seconds}")
    return "\n".join(lines)
