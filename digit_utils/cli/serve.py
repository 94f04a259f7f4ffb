"""`digits serve [--run RUN_DIR ...]`: the prediction API and drawing page over HTTP."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path

from digit_utils import paths
from digit_utils.cli.options import add_model_options, device_of

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_SOURCE = (
    "default: the newest run list's runs (the ensemble's members), else the newest run"
)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def describe(runs: list[Path], source: str, tta: int) -> dict:
    """What /info reports: the runs, their models and holdout accuracy, how they combine."""
    from digit_utils.train.runs import read_metrics  # torch: only once a server starts

    rows = []
    for run in runs:
        metrics = read_metrics(run)
        rows.append(
            {
                "name": run.name,
                "path": str(run),
                "model": metrics.get("model"),
                # the Predictor loads last.pt, whose holdout accuracy is the final epoch's
                "cv_accuracy": metrics.get("final_val_acc"),
            }
        )
    record = {
        "runs": rows,
        "source": source,
        "ensemble": "soft average" if len(runs) > 1 else "single model",
        "tta": tta,
    }
    submission = _read_json(paths.outputs_dir() / "submission.json")
    if source == DEFAULT_SOURCE and submission:  # how the latest pipeline combined them
        record["pipeline"] = {k: submission.get(k) for k in ("method", "cv_accuracy", "tta")}
    return record


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _serve(args) -> int:
    import torch
    import uvicorn

    from digit_utils.serve.app import create_app
    from digit_utils.serve.inputs import Limits
    from digit_utils.serve.predictor import Predictor
    from digit_utils.train.runs import default_runs

    if args.run:
        runs, source = [Path(r) for r in args.run], "--run"
    else:
        runs, source = default_runs(), DEFAULT_SOURCE
    torch.set_num_threads(args.threads)
    # loaded once, before serving
    predictor = Predictor.from_run(runs, tta=args.tta, device=device_of(args))
    given = {k: getattr(args, k) for k in ("max_images", "max_bytes", "max_pixels")}
    limits = Limits(**{k: v for k, v in given.items() if v is not None})  # None: the default
    app = create_app(predictor, info=describe(runs, source, args.tta), limits=limits)
    names = ", ".join(str(r) for r in runs)
    log.info(f"serving {len(runs)} run(s) ({source}): {names} on {predictor.device}")
    if args.host not in LOOPBACK:
        log.warning(f"listening on {args.host}: other machines can reach this server")
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for whatever
    # handler was there before: the default one would turn a clean stop into a kill (SIGTERM)
    # or a KeyboardInterrupt (SIGINT). A signal is how a server is meant to end, so exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    log.info("stopped")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("serve", help="a prediction API and a page to draw digits on")
    add_model_options(p, "the runs of the latest pipeline, else the newest run in outputs/runs")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="CPU threads per forward pass (default 1: concurrent requests use the other cores)",
    )
    # Defaults live in serve.Limits (GET /info shows the ones in force).
    p.add_argument("--max-images", type=_positive, help="images in one request")
    p.add_argument("--max-bytes", type=_positive, help="bytes in one request body")
    p.add_argument("--max-pixels", type=_positive, help="width × height of one image")
    p.set_defaults(func=_serve)
