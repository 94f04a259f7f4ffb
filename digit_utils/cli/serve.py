"""`digits serve [--run RUN_DIR ...]`: the prediction API and drawing page over HTTP."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path

from digit_utils.cli.options import add_model_options, device_of
from digit_utils.errors import DigitsError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _settings(args, runs: list[Path], source: str) -> dict:
    """What each server process needs to load the same app: plain JSON (see serve.launch)."""
    given = {k: getattr(args, k) for k in ("max_images", "max_bytes", "max_pixels")}
    return {
        "runs": [str(r) for r in runs],
        "source": source,
        "tta": args.tta,
        "device": device_of(args),
        "threads": args.threads,
        "limits": {k: v for k, v in given.items() if v is not None},  # None: the default
    }


def _serve(args) -> int:
    from digit_utils.serve import launch
    from digit_utils.train.runs import default_runs

    sock = launch.bind(args.host, args.port)  # before loading anything: a busy port fails now
    with sock:  # closed however it ends, a failure to find the runs included
        if args.run:
            runs, source = [Path(r) for r in args.run], "--run"
        else:
            runs, source = default_runs(), launch.DEFAULT_SOURCE
        settings = _settings(args, runs, source)
        workers = args.workers or _default_workers(settings["device"])
        if args.host not in LOOPBACK:
            log.warning(f"listening on {args.host}: other machines can reach this server")
        head = f"serving {len(runs)} run(s) ({source}): {', '.join(str(r) for r in runs)}"
        if workers == 1:
            _one_process(settings, sock, head)
        else:
            launch.describe(runs, source, args.tta)  # an unfinished run folder: one line, here
            log.info(f"{head} on {args.device}, {workers} worker processes")
            _worker_processes(settings, sock, workers)
    log.info("stopped")
    return 0


GRACE_S = 30  # in-flight requests get this long to finish after SIGINT/SIGTERM


def _one_process(settings: dict, sock, head: str) -> None:
    """The models load here, once, and this process serves."""
    import uvicorn

    from digit_utils.serve import launch

    app = launch.build_app(settings)  # Ctrl-C while the models load still interrupts
    log.info(f"{head} on {app.state.predictor.device}")
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for whatever
    # handler was there before: the default one would turn a clean stop into a kill (SIGTERM)
    # or a KeyboardInterrupt (SIGINT). A signal is how a server is meant to end, so exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=GRACE_S)
    uvicorn.Server(config).run(sockets=[sock])


def _worker_processes(settings: dict, sock, workers: int) -> None:
    """uvicorn's supervisor starts ``workers`` processes on the same socket; each loads its own
    copy of the models from the settings (serve.launch.app_from_env)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from digit_utils.serve import launch

    os.environ[launch.SETTINGS_ENV] = json.dumps(settings)
    config = uvicorn.Config(
        "digit_utils.serve.launch:app_from_env",
        factory=True,
        workers=workers,
        log_level="info",
        timeout_graceful_shutdown=GRACE_S,
    )
    supervisor = Multiprocess(config, sockets=[sock])  # it handles SIGINT/SIGTERM itself
    supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise DigitsError("a worker process could not load the models: its log above says why")


def _default_workers(device: str | None) -> int:
    """One worker process per core on a CPU; one on a GPU (one process keeps it busy)."""
    import torch

    if device not in (None, "cpu") or (device is None and torch.cuda.is_available()):
        return 1
    return max(1, len(os.sched_getaffinity(0)))


def register_cli(sub) -> None:
    p = sub.add_parser("serve", help="a prediction API and a page to draw digits on")
    add_model_options(p, "the runs of the latest pipeline, else the newest run in outputs/runs")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=_positive,
        help="server processes, each with its own copy of the models (default: one per CPU "
        "core on a CPU, one on a GPU)",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="CPU threads per forward pass in each worker (default 1: the workers use the cores)",
    )
    # Defaults live in serve.Limits (GET /info shows the ones in force).
    p.add_argument("--max-images", type=_positive, help="images in one request")
    p.add_argument("--max-bytes", type=_positive, help="bytes in one request body")
    p.add_argument("--max-pixels", type=_positive, help="width × height of one image")
    p.set_defaults(func=_serve)
