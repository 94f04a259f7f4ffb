#!/usr/bin/env python3
"""Stands in for the real `kaggle` CLI, which needs kaggle.com (unreachable on our machines).

Installed by the `fake_kaggle` fixture as an executable named `kaggle` first on PATH. It appends
its argv as one JSON line to $FAKE_KAGGLE_LOG and then behaves like the real CLI would:
- $FAKE_KAGGLE_FAIL = 403 | 401 | 404 | proxy-403 | network: print what the real CLI prints
  then and exit 1 (proxy-403: an HTTPS proxy refusing the CONNECT tunnel);
  leak: fail with the key's value in the output (our code must redact it);
  leak-token: fail with the token read from the file KAGGLE_API_TOKEN names (the CLI takes a
  token or a path to one);
  non-utf8: answer with bytes that are not UTF-8 (a server's text in another encoding), exit 0;
  non-utf8-error: the same on stderr, exit 1;
  push-rejected | submit-rejected: print the refusal the real CLI prints and still exit 0;
  dropped-sources: `kernels push` succeeds but prints the line the real CLI prints (exit 0) when
  it drops the metadata's kernel_sources because they do not exist (yet);
  dropped-competition: the same for competition_sources (the rules not accepted, or a typo);
  old-cli: an argparse error on `--accelerator`, as a kaggle CLI older than 1.8.4 gives;
- `competitions download -c SLUG -p DIR`: copy $FAKE_KAGGLE_ZIP to DIR/SLUG.zip;
- `competitions submit ...`: print the real success line;
- `competitions submissions ...`: print a CSV of past scores;
- `kernels push -p DIR`: print the kernel URL from DIR/kernel-metadata.json;
- `kernels status SLUG`: print a status line ($FAKE_KAGGLE_KERNEL_STATUS, default COMPLETE, and
  $FAKE_KAGGLE_KERNEL_FAILURE as the failure message when set). A status may be a sequence
  "QUEUED,RUNNING,COMPLETE": the n-th status call for a kernel since its last push answers the
  n-th word (the last one repeats), as a pushed kernel's run moves on. $FAKE_KAGGLE_KERNEL_STATUSES
  (JSON, {"owner/slug": "QUEUED,COMPLETE"}) sets it per kernel. `kernels status OWNER/SLUG/N`
  asks for version N (pushes are numbered 1, 2, … per kernel): an older version is COMPLETE;
  with $FAKE_KAGGLE_STALE set, a status without a version answers COMPLETE (the previous
  version's, as the real API may before the new run registers);
- `kernels output SLUG -p DIR [--file-pattern REGEX]`: write the files $FAKE_KAGGLE_OUTPUT names
  (a JSON list of paths relative to DIR; default: 05's submission.csv and run list), only those
  whose path REGEX matches with re.search (as the real CLI, 1.8.4 and later, filters them);
  an invalid REGEX fails as the real CLI does;
- `--version`: "Kaggle CLI $FAKE_KAGGLE_VERSION" (default 2.2.5).
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path

FAILURES = {
    "403": "403 Client Error: Forbidden for url: https://www.kaggle.com/api/v1/competitions/data",
    "401": "401 Client Error: Unauthorized for url: https://www.kaggle.com/api/v1/competitions",
    "404": "404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/kernels/status",
    # What requests prints when an HTTPS proxy answers CONNECT with 403 (Kaggle is never reached).
    "proxy-403": (
        "requests.exceptions.ProxyError: HTTPSConnectionPool(host='www.kaggle.com', port=443): "
        "Max retries exceeded with url: /api/v1/competitions/data/download-all/digit-recognizer "
        "(Caused by ProxyError('Unable to connect to proxy', "
        "OSError('Tunnel connection failed: 403 Forbidden')))"
    ),
    "network": (
        "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='www.kaggle.com', "
        "port=443): Max retries exceeded (Failed to establish a new connection: "
        "[Errno -3] Temporary failure in name resolution)"
    ),
}
# The real CLI prints these refusals on stdout and exits 0.
SOFT_FAILURES = {
    "push-rejected": "Kernel push error: Notebook exceeds the maximum size of 1 MB",
    "submit-rejected": "Could not submit to competition",
}


def opt(args, *names):
    for i, a in enumerate(args):
        if a in names and i + 1 < len(args):
            return args[i + 1]
    return None


def pushes(ref):
    """How many times kernel ``ref`` has been pushed (its latest version number)."""
    n = 0
    for call in calls():
        if call[:2] == ["kernels", "push"]:
            kernel_dir = Path(opt(call, "-p", "--path"))
            n += json.loads((kernel_dir / "kernel-metadata.json").read_text())["id"] == ref
    return n


def calls():
    return [
        json.loads(line) for line in Path(os.environ["FAKE_KAGGLE_LOG"]).read_text().splitlines()
    ]


def kernel_state(query):
    """This call's status of ``query`` (OWNER/SLUG[/N]): the n-th word of its sequence."""
    parts = query.split("/")
    ref, version = "/".join(parts[:2]), parts[2] if len(parts) > 2 else ""
    if version and int(version) < pushes(ref):
        return "COMPLETE"
    if not version and os.environ.get("FAKE_KAGGLE_STALE") and pushes(ref):
        return "COMPLETE"
    per_kernel = json.loads(os.environ.get("FAKE_KAGGLE_KERNEL_STATUSES", "{}"))
    words = per_kernel.get(ref, os.environ.get("FAKE_KAGGLE_KERNEL_STATUS", "COMPLETE")).split(",")
    n = 0  # status calls for ref since its last push, this one included
    for call in calls():
        if call[:2] == ["kernels", "status"] and call[2].split("/")[:2] == ref.split("/"):
            n += 1
        elif call[:2] == ["kernels", "push"]:
            kernel_dir = Path(opt(call, "-p", "--path"))
            if json.loads((kernel_dir / "kernel-metadata.json").read_text())["id"] == ref:
                n = 0
    return words[min(n, len(words)) - 1].strip()


def main(args):
    with open(os.environ["FAKE_KAGGLE_LOG"], "a") as fh:
        fh.write(json.dumps(args) + "\n")
    fail = os.environ.get("FAKE_KAGGLE_FAIL")
    if fail == "leak":
        print(f"Error: bad request with key {os.environ.get('KAGGLE_KEY')}", file=sys.stderr)
        return 1
    if fail == "leak-token":
        token = Path(os.environ["KAGGLE_API_TOKEN"]).read_text().strip()
        print(f"Error: token {token} was refused", file=sys.stderr)
        return 1
    if fail == "non-utf8-error":
        sys.stderr.buffer.write(b"Error: caf\xe9 \xff\xfe refused\n")
        return 1
    if fail in FAILURES:
        print(FAILURES[fail], file=sys.stderr)
        return 1
    if fail in SOFT_FAILURES:
        print(SOFT_FAILURES[fail])
        return 0
    group, verb = (args + ["", ""])[:2]
    if group in ("-v", "--version"):
        print(f"Kaggle CLI {os.environ.get('FAKE_KAGGLE_VERSION', '2.2.5')}")
        return 0
    if fail == "old-cli" and "--accelerator" in args:
        usage = "usage: kaggle [-h] [-v] {competitions,c,datasets,d,kernels,k,config} ..."
        print(usage, file=sys.stderr)
        print(f"kaggle: error: unrecognized arguments: {' '.join(args[-2:])}", file=sys.stderr)
        return 2
    if group == "competitions" and verb == "download":
        slug = opt(args, "-c", "--competition") or args[2]
        dest = Path(opt(args, "-p", "--path") or ".")
        shutil.copy(os.environ["FAKE_KAGGLE_ZIP"], dest / f"{slug}.zip")
        print(f"Downloading {slug}.zip to {dest}\n100%|##########| 15.3M/15.3M")
    elif group == "competitions" and verb == "submit":
        print("100%|##########| 208k/208k\nSuccessfully submitted to Digit Recognizer")
    elif group == "competitions" and verb == "submissions" and fail == "non-utf8":
        sys.stdout.buffer.write(
            b"fileName,date,description,status,publicScore,privateScore\n"
            b"sub.csv,2026-11-20 10:00:00,caf\xe9 \xff,complete,0.99757,\n"
        )
    elif group == "competitions" and verb == "submissions":
        print("fileName,date,description,status,publicScore,privateScore")
        print("submission.csv,2026-11-20 10:00:00,ensemble,complete,0.99757,")
    elif group == "kernels" and verb == "push":
        meta = json.loads((Path(opt(args, "-p", "--path")) / "kernel-metadata.json").read_text())
        if fail == "dropped-sources" and meta["kernel_sources"]:
            print(
                "The following are not valid kernel sources and could not be added to the "
                f"kernel: {meta['kernel_sources']}"
            )
        if fail == "dropped-competition":
            print(
                "The following are not valid competition sources and could not be added to the "
                f"kernel: {meta['competition_sources']}"
            )
        print(
            f"Kernel version {pushes(meta['id'])} successfully pushed.  Please check progress at "
            f"https://www.kaggle.com/code/{meta['id']}"
        )
    elif group == "kernels" and verb == "status":
        print(f'{args[2]} has status "KernelWorkerStatus.{kernel_state(args[2])}"')
        if failure := os.environ.get("FAKE_KAGGLE_KERNEL_FAILURE"):
            print(f'Failure message: "{failure}"')
    elif group == "kernels" and verb == "output":
        dest = Path(opt(args, "-p", "--path") or ".")
        default = ["submission.csv", "outputs/05_ensemble_submission/runs.json"]
        pattern = opt(args, "--file-pattern")
        try:
            wanted = re.compile(pattern) if pattern is not None else None
        except re.error as e:
            print(f"Invalid regex pattern '{pattern}': {e}", file=sys.stderr)
            return 1
        for name in json.loads(os.environ.get("FAKE_KAGGLE_OUTPUT", json.dumps(default))):
            if wanted is not None and not wanted.search(name):
                continue
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_text("ImageId,Label\n1,7\n" if name.endswith(".csv") else "{}")
            print(f"Output file downloaded to {dest / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
