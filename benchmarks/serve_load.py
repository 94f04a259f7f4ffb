"""Load on `digits serve`: concurrent clients posting what users send, for a fixed time.

Starts the real server (a subprocess on a free loopback port) once per variant of the code, then
drives it with a bounded number of client threads for a bounded time per row. The rows send what
users send: a 28×28 PNG (an API client), the drawing page's 280×280 canvas PNG, a phone-photo
-like 1600×1200 JPEG, and 64 28×28 PNGs in one request. Prints requests/s, images/s,
p50/p95/p99 latency, the error count, the CPU cores the server used (all its processes) and its
resident memory, and each row's p50 and throughput as ratios against the first variant.

    python benchmarks/serve_load.py                         # this checkout, 1 and 2 workers
    git archive HEAD~1 digit_utils | tar -x -C /tmp/before  # an earlier commit, side by side:
    python benchmarks/serve_load.py --baseline /tmp/before --seconds 4

Without --run it trains a tiny fast_cnn run (one epoch on 2,000 rows of the offline sample) in a
temp dir: latency does not depend on how well a model was trained. Not a test: run it by hand.
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

REPO = Path(__file__).resolve().parents[1]


def tiny_run(model: str, source: data.DataSource, folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sample's "not 42,000 rows" notice
        images, labels = data.load_train(source)
    cfg = TrainConfig.from_dict({"model": model, "epochs": 1, "device": "cpu", "name": model})
    train(cfg, images[:2000], labels[:2000], run_dir=folder / model, quiet=True)
    return folder / model


# --------------------------------------------------------------------------------------------
# What users send


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def canvas_png(digit: np.ndarray) -> bytes:
    """The drawing page's post: black ink on a pure white 280×280 RGBA canvas, as PNG."""
    big = np.asarray(Image.fromarray(digit).resize((280, 280), Image.Resampling.BILINEAR))
    gray = np.where(big < 8, 255, 255 - big).astype(np.uint8)  # anti-aliased edges, white paper
    return encode(Image.fromarray(gray).convert("RGBA"), "PNG")


def photo_jpeg(digit: np.ndarray, seed: int = 0) -> bytes:
    """A phone-photo-like 1600×1200 JPEG: dark ink on grey-white paper lit from one side."""
    rng = np.random.default_rng(seed)
    light = np.linspace(235, 150, 1600)[None, :] * np.ones((1200, 1))
    paper = light + rng.normal(0, 4, (1200, 1600))
    big = np.asarray(Image.fromarray(digit).resize((600, 600), Image.Resampling.BICUBIC))
    paper[300:900, 500:1100] *= 1 - 0.8 * big / 255.0
    rgb = np.repeat(np.clip(paper, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return encode(Image.fromarray(rgb), "JPEG", quality=88)


def payloads(source: data.DataSource, batch: int) -> dict[str, tuple[str, list, int]]:
    """name -> (query string, multipart files, images per request)."""
    digits = data.load_test(source)[:batch, 0]

    def small(i):
        return ("files", (f"{i}.png", encode(Image.fromarray(digits[i]), "PNG"), "image/png"))

    return {  # API clients skip the 28×28 image in the reply; the page wants it
        "28×28 PNG": ("?image=false", [small(0)], 1),
        "280×280 canvas PNG": (
            "",
            [("files", ("drawing.png", canvas_png(digits[0]), "image/png"))],
            1,
        ),
        "1600×1200 photo JPEG": (
            "?image=false",
            [("files", ("photo.jpg", photo_jpeg(digits[0]), "image/jpeg"))],
            1,
        ),
        f"{batch} × 28×28 PNG": ("?image=false", [small(i) for i in range(batch)], batch),
    }


# --------------------------------------------------------------------------------------------
# The server and its processes


def tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return out


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def start_server(
    code: Path, run: Path, extra: list[str], log: Path
) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "digit_utils.cli", "serve", "--run", str(run), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*cmd, "--port", str(port), *extra], stdout=out, stderr=out, env=env, cwd=code
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(900):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start; see {log}")


def load(url: str, query: str, files: list, clients: int, seconds: float) -> dict:
    """`clients` threads posting `files` back to back for `seconds`; latencies in ms."""
    results: list[tuple[float, bool]] = []  # list.append is atomic across threads
    stop = time.perf_counter() + seconds

    def client():
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    ok = http.post(f"/predict{query}", files=files).status_code == 200
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
    p50, p95, p99 = np.percentile([ms for ms, _ in results], [50, 95, 99])
    return {
        "requests/s": len(results) / wall, "p50 ms": p50, "p95 ms": p95, "p99 ms": p99,
        "errors": sum(not ok for _, ok in results), "wall": wall,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------


def variants(args) -> list[tuple[str, Path, list[str]]]:
    """(name, code folder, extra `digits serve` arguments); the first is the reference."""
    out = [("before", Path(args.baseline), [])] if args.baseline else []
    for w in args.workers.split(","):
        out.append((f"{w} worker{'s' if w != '1' else ''}", REPO, ["--workers", w]))
    return out


def bench(name, code, extra, run, sent, plan, args, tmp) -> list[dict]:
    proc, url = start_server(code, run, extra, tmp / f"{name.replace(' ', '_')}.log")
    rows = []
    try:
        for payload, clients in plan:
            query, files, n = sent[payload]
            load(url, query, files, 1, 0.5)  # warm-up: connections, allocator, first batches
            pids = tree(proc.pid)
            cpu = cpu_seconds(pids)
            r = load(url, query, files, clients, args.seconds)
            cores = (cpu_seconds(pids) - cpu) / r.pop("wall")
            rows.append(
                {"code": name, "payload": payload, "clients": clients, **r,
                 "images/s": r["requests/s"] * n, "server cores": cores, "RSS MiB": rss_mb(pids)}
            )  # fmt: skip
            print({k: round(v, 1) if isinstance(v, float) else v for k, v in rows[-1].items()})
    finally:
        proc.terminate()
        proc.wait(60)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown, with each row's p50 and requests/s against the reference variant's same row."""
    ref = {(r["payload"], r["clients"]): r for r in rows if r["code"] == rows[0]["code"]}
    cols = ["code", "payload", "clients", "requests/s", "images/s", "p50 ms", "p95 ms", "p99 ms",
            "errors", "server cores", "RSS MiB", "p50 ÷ ref", "req/s × ref"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        base = ref[(r["payload"], r["clients"])]
        r = {**r, "p50 ÷ ref": r["p50 ms"] / base["p50 ms"]}
        r["req/s × ref"] = r["requests/s"] / base["requests/s"]
        cells = [f"{r[c]:,.2f}" if "ref" in c else r[c] for c in cols]
        cells = [f"{v:,.1f}" if isinstance(v, float) else str(v) for v in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", metavar="RUN_DIR", help="default: a tiny fast_cnn run")
    parser.add_argument("--baseline", metavar="DIR", help="a checkout of the code to compare with")
    parser.add_argument("--workers", default="1,2", help="worker counts to run this code with")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="per row")
    parser.add_argument("--batch", type=int, default=64, help="images in a batch request")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serve_load-"))
    source = data.DataSource(data.make_sample(tmp / "sample"), "sample")
    run = Path(args.run) if args.run else tiny_run("fast_cnn", source, tmp)
    sent = payloads(source, args.batch)
    small, canvas, photo, batch = sent
    c = args.clients
    plan = [(small, 1), (small, c), (canvas, 1), (canvas, c), (photo, c), (batch, c)]
    rows = []
    for name, code, extra in variants(args):
        rows += bench(name, code, extra, run, sent, plan, args, tmp)
    load_avg = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load_avg} after the run"
    text = f"{args.seconds:g} s per row; clients on the same machine; {machine}\n\n{table(rows)}"
    print(f"\n{text}")
    atomic.write_text(text, paths.outputs_dir() / "benchmarks" / "serve_load.md")


if __name__ == "__main__":
    main()
