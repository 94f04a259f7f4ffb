"""Reading ``outputs/pipeline.json``: did the last pipeline run finish, fail, or die?

The runner records its process id and host when it starts. A record still saying "running"
whose process is gone (killed with SIGKILL, a crashed machine) is reported as interrupted, with
what finished and what did not.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .errors import DigitsError


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
