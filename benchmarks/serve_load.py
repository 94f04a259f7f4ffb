"""Load on `digits serve`: concurrent clients posting PNG digits for a fixed time.

Starts the real server (a subprocess on a free loopback port) once per model, then drives it with
a bounded number of client threads for a bounded time, once with single-image requests and once
with 64-image requests. Prints requests/s, images/s, p50/p95/p99 latency, the error count and
the server's resident memory before and after each load. Not a test: run it by hand, e.g.

    python benchmarks/serve_load.py                       # tiny fast_cnn and deep_cnn runs
    python benchmarks/serve_load.py --run fast_cnn=outputs/runs/fast_cnn-s0 --seconds 60

Without --run it trains tiny runs (one epoch on 2,000 rows of the offline sample) in a temp dir:
latency does not depend on how well a model was trained.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from digit_utils import atomic, data, paths
from digit_utils.config import TrainConfig
from digit_utils.train.loop import train

MODELS = ("fast_cnn", "deep_cnn")


def tiny_runs(models, source: data.DataSource, folder: Path) -> dict[str, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sample's "not 42,000 rows" notice
        images, labels = data.load_train(source)
    runs = {}
    for model in models:
        cfg = TrainConfig.from_dict({"model": model, "epochs": 1, "device": "cpu", "name": model})
        train(cfg, images[:2000], labels[:2000], run_dir=folder / model, quiet=True)
        runs[model] = folder / model
    return runs


def png_files(source: data.DataSource, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    """n sample test digits as PNG uploads (multipart fields)."""
    images = data.load_test(source)[:n, 0]
    files = []
    for i, digit in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(digit).save(buf, format="PNG")
        files.append(("files", (f"{i}.png", buf.getvalue(), "image/png")))
    return files


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(run: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "digit_utils.cli", "serve", "--run", str(run)]
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*cmd, "--port", str(port), "--device", "cpu"], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start; see {log}")


def load(url: str, files: list, clients: int, seconds: float) -> dict:
    """`clients` threads posting `files` back to back for `seconds`; latencies in ms."""
    results: list[tuple[float, bool]] = []  # list.append is atomic across threads
    stop = time.perf_counter() + seconds

    def client():
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    ok = http.post("/predict", files=files).status_code == 200
                except httpx.HTTPError:
                    ok = False
                results.append(((time.perf_counter() - start) * 1000, ok))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begin
    latencies = [ms for ms, _ in results]
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    n, errors = len(results), sum(not ok for _, ok in results)
    return {
        "requests/s": n / wall, "images/s": n * len(files) / wall,
        "p50 ms": p50, "p95 ms": p95, "p99 ms": p99, "errors": errors, "requests": n,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], metavar="MODEL=RUN_DIR")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=64, help="images in a batch request")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serve_load-"))
    given = dict(item.split("=", 1) for item in args.run)
    source = data.DataSource(data.make_sample(tmp / "sample"), "sample")
    runs = {m: Path(r) for m, r in given.items()} if given else tiny_runs(MODELS, source, tmp)
    payloads = {1: png_files(source, 1), args.batch: png_files(source, args.batch)}
    # (images per request, clients): one user's latency, then the server under load
    plan = [(1, 1), (1, args.clients), (args.batch, args.clients)]
    rows = []
    for model, run in runs.items():
        proc, url = start_server(run, tmp / f"{model}.log")
        try:
            for n, clients in plan:
                files = payloads[n]
                load(url, files, 1, 1.0)  # warm-up: connections, allocator, first batches
                before = rss_mb(proc.pid)
                result = load(url, files, clients, args.seconds)
                memory = {"RSS MiB start": before, "RSS MiB end": rss_mb(proc.pid)}
                rows.append({"model": model, "images/request": n, "clients": clients, **result})
                rows[-1].update(memory)
                print(model, n, clients, {k: round(float(v), 1) for k, v in result.items()})
        finally:
            proc.terminate()
            proc.wait(30)
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{v:,.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    table = "\n".join(lines) + "\n"
    print(f"\n{args.seconds:g} s per row; {machine}\n\n{table}")
    atomic.write_text(table, paths.outputs_dir() / "benchmarks" / "serve_load.md")


if __name__ == "__main__":
    main()
