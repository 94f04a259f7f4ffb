"""The run record ``outputs/pipeline.json``: written by the runner, read by ``--status`` and by
the next run. Did the last run finish, fail, or die?

The runner records its process id and host when it starts and rewrites the record atomically
after each notebook, so a crash leaves an accurate record. A record still saying "running" whose
process is gone (killed with SIGKILL, a crashed machine) is read as interrupted, with what
finished and what did not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from digit_utils import __version__, atomic
from digit_utils.errors import DigitsError

RECORD = "pipeline.json"  # the run record, in the outputs folder


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


def read(path: Path) -> dict | None:
    """The record at ``path`` with its status corrected: "interrupted" for a dead runner."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DigitsError(f"{path}: cannot read the pipeline record ({e})") from None
    if record.get("status") == "running":
        same_host = record.get("host") == socket.gethostname()
        pid = record.get("pid")
        if same_host and isinstance(pid, int) and not process_alive(pid):
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
