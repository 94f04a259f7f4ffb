"""Calls to the Kaggle CLI, in a subprocess.

``import kaggle`` authenticates at import time and exits the process when no credentials exist,
so this module never imports it: it runs the ``kaggle`` executable and turns its failures into one
:class:`KaggleError` that says what to do. Credential values never appear in any message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from digit_utils.errors import KaggleError

COMPETITION = "digit-recognizer"

NO_CREDENTIALS = (
    "no Kaggle credentials found. Run `kaggle auth login`, or create an API token at kaggle.com "
    "→ Settings → API and save it as ~/.kaggle/access_token.txt or ~/.kaggle/kaggle.json "
    "(chmod 600), or set KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY."
)
USERNAME_SOURCES = (
    "the user name comes from KAGGLE_USERNAME or kaggle.json; API tokens "
    "(access_token.txt, KAGGLE_API_TOKEN) and `kaggle auth login` store none"
)
NO_USERNAME = f"pass --user NAME ({USERNAME_SOURCES})"
TOKEN_FILES = ("access_token.txt", "access_token")  # always read from ~/.kaggle
OAUTH_FILE = "credentials.json"  # written by `kaggle auth login`, in ~/.kaggle


def _home_dir() -> Path:
    return Path.home() / ".kaggle"


def _config_dir() -> Path:
    """Where the CLI reads kaggle.json: KAGGLE_CONFIG_DIR, else ~/.kaggle, else (when ~/.kaggle
    does not exist) $XDG_CONFIG_HOME/kaggle."""
    if env := os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(env)
    if _home_dir().is_dir():
        return _home_dir()
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def _credential_files() -> list[Path]:
    home = _home_dir()
    return [_config_dir() / "kaggle.json", *(home / f for f in (*TOKEN_FILES, OAUTH_FILE))]


def has_credentials() -> bool:
    """True when the Kaggle CLI would find credentials (without revealing them)."""
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    return any(path.is_file() for path in _credential_files())


def _kaggle_json() -> dict:
    """The credentials file's fields ({} when it is missing or unreadable)."""
    try:
        fields = json.loads((_config_dir() / "kaggle.json").read_text())
    except (OSError, ValueError):
        return {}
    return fields if isinstance(fields, dict) else {}


def username() -> str | None:
    """The Kaggle user name from the environment or kaggle.json, if either gives one."""
    if env := os.environ.get("KAGGLE_USERNAME"):
        return env
    name = _kaggle_json().get("username")
    if name is not None and not (isinstance(name, str) and name.strip()):
        # a list or a number would become a kernel owner like "['a']", or a traceback
        raise KaggleError(
            f'{_config_dir() / "kaggle.json"}: "username" is {json.dumps(name)}, not a user '
            'name; write it as a string, e.g. "username": "alice", or pass --user NAME'
        )
    return name


def executable() -> str:
    """The ``kaggle`` program: first on PATH, else the one installed beside this Python."""
    found = shutil.which("kaggle")
    if found:
        return found
    beside = Path(sys.executable).parent / "kaggle"
    if beside.is_file():
        return str(beside)
    raise KaggleError("the `kaggle` command is not installed; run `pip install kaggle`")


def _token_from_path(value: str) -> str:
    """The token in the file KAGGLE_API_TOKEN names, when it names one (the CLI accepts both)."""
    with contextlib.suppress(OSError, ValueError):
        path = Path(value).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace").strip()
    return ""


def _secrets() -> list[str]:
    values = [os.environ.get(k, "") for k in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")]
    values.append(_token_from_path(os.environ.get("KAGGLE_API_TOKEN", "")))
    values.append(str(_kaggle_json().get("key", "")))
    for name in TOKEN_FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            values.append((_home_dir() / name).read_text().strip())
    with contextlib.suppress(OSError, ValueError, AttributeError):
        oauth = json.loads((_home_dir() / OAUTH_FILE).read_text())
        values += [v for v in oauth.values() if isinstance(v, str) and len(v) >= 12]
    return [v for v in values if len(v) >= 4]


def redact(text: str) -> str:
    """Replace every credential value in ``text`` with ***."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def explain_failure(output: str) -> str:
    """One sentence on what went wrong and what to do, from the CLI's output."""
    low = output.lower()
    # A proxy that refuses the CONNECT tunnel also says "403 Forbidden", but Kaggle never saw
    # the request: that is not about the competition rules.
    if any(word in low for word in ("proxyerror", "tunnel connection failed", "proxy")):
        return (
            "a proxy refused the connection to kaggle.com (" + _last_line(output) + "): check "
            "HTTPS_PROXY / HTTP_PROXY and whether the proxy lets kaggle.com through, then retry."
        )
    if "403" in low or "forbidden" in low:
        return (
            "Kaggle refused access (HTTP 403): accept the competition rules at "
            f"https://www.kaggle.com/competitions/{COMPETITION}/rules with the account whose "
            "token you use, then try again."
        )
    if "401" in low or "unauthorized" in low or "kaggle.json" in low or "credentials" in low:
        return "Kaggle rejected the credentials (HTTP 401): " + NO_CREDENTIALS
    if "404" in low or "not found" in low:
        return "Kaggle does not know that resource (HTTP 404): check the name or slug."
    network = (
        "connection",
        "name resolution",
        "max retries",
        "timed out",
        "network is unreachable",
        "temporary failure",
    )
    if any(word in low for word in network):
        return "cannot reach kaggle.com: check the network connection (or a proxy) and retry."
    return "the Kaggle CLI failed: " + _last_line(output)


def _last_line(output: str) -> str:
    last = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return last[-1] if last else "no output"


def command(args: list[str]) -> list[str]:
    """The full argv of a Kaggle CLI call (pure: tests and dry runs inspect it)."""
    return [executable(), *args]


def run(args: list[str], *, cwd: str | Path | None = None, timeout: float = 600) -> str:
    """Run ``kaggle ARGS``; return its stdout, or raise KaggleError saying what to do."""
    if not has_credentials():
        raise KaggleError(NO_CREDENTIALS)
    argv = command(args)
    try:
        # The CLI echoes server text and file names in whatever bytes they have: a byte that is
        # not UTF-8 is replaced, never a UnicodeDecodeError traceback.
        done = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise KaggleError(
            f"`kaggle {' '.join(args[:2])}` timed out after {timeout:.0f} s"
        ) from None
    except OSError as e:
        raise KaggleError(_cannot_start(argv[0], e)) from None
    if done.returncode != 0:
        raise KaggleError(redact(explain_failure(done.stdout + "\n" + done.stderr)))
    return redact(done.stdout)


def _cannot_start(program: str, e: OSError) -> str:
    """Why the kaggle executable did not start, naming it: a script whose ``#!`` interpreter is
    missing fails with "No such file" although the script itself exists."""
    why = e.strerror or type(e).__name__
    if e.errno == errno.ENOENT and Path(program).is_file():
        first = Path(program).read_bytes()[:200].split(b"\n", 1)[0].decode("utf-8", "replace")
        why = f"its interpreter line {first!r} names a program that does not exist"
    return f"cannot start the kaggle CLI {program}: {why}; reinstall it (pip install kaggle)"


def version() -> tuple[int, ...]:
    """The installed kaggle CLI's version, from ``kaggle --version`` ("Kaggle CLI 2.2.5")."""
    out = run(["--version"])
    match = re.search(r"(\d+(?:\.\d+)+)", out)
    if not match:
        raise KaggleError(f"cannot read the kaggle CLI's version from `kaggle --version`: {out!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def require_version(minimum: str, why: str) -> None:
    """KaggleError unless the installed CLI is at least ``minimum`` (``why`` it must be)."""
    have = version()
    if have < tuple(int(part) for part in minimum.split(".")):
        raise KaggleError(
            f"the installed kaggle CLI is {'.'.join(map(str, have))}, older than {minimum}, "
            f"which {why}: run `pip install -U 'kaggle>={minimum}'`"
        )


# --------------------------------------------------------------------------------------------
# Competition submissions

# The CLI prints these and still exits 0.
SOFT_FAILURES = ("Could not submit to competition", "Could not find competition")


def submit_args(path: str | Path, message: str) -> list[str]:
    """The ``kaggle`` arguments that submit a file (pure)."""
    return ["competitions", "submit", COMPETITION, "-f", str(Path(path).resolve()), "-m", message]


def submit(path: str | Path, message: str) -> str:
    """Submit a file through the CLI; returns its report (``submit.submit`` validates first)."""
    if not message.strip():
        raise KaggleError("the submission message is empty: say what this submission is (-m)")
    out = run(submit_args(path, message))
    for marker in SOFT_FAILURES:
        if marker in out:
            lines = [line for line in out.splitlines() if marker in line]
            raise KaggleError(f"Kaggle did not accept {Path(path).name}: {lines[0].strip()}")
    return out


def submissions() -> list[dict[str, str]]:
    """Past submissions (newest first) as dicts with fileName, date, description, publicScore."""
    import csv
    import io

    out = run(["competitions", "submissions", COMPETITION, "-v"])
    lines = out.splitlines()
    # Anything the CLI prints before the CSV (notices, warnings) is not data.
    start = next((i for i, line in enumerate(lines) if "fileName" in line.split(",")), None)
    if start is None:
        return []
    return list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
