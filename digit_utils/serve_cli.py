"""`digits serve [--run RUN_DIR ...]`: the prediction API and drawing page over HTTP."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path

from . import paths
from .errors import DigitsError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
HOW_TO_TRAIN = (
    "train one with `digits pipeline` (notebook 03_train_cnn writes outputs/runs/<name>/), "
    "or pass --run RUN_DIR"
)


def default_runs() -> tuple[list[Path], str]:
    """The runs the latest pipeline's ensemble used, else the newest run; and which it was."""
    from .experiments import load_run_list
    from .predict_cli import _latest_run

    try:
        groups = load_run_list()  # what 03_train_cnn recorded and 05_ensemble_submission used
        return [run for group in groups.values() for run in group], "03_train_cnn/runs.json"
    except DigitsError as e:
        reason = str(e)
    try:
        return [_latest_run()], f"the newest run in {paths.runs_dir()} ({reason})"
    except DigitsError:
        raise DigitsError(
            f"no trained run to serve in {paths.runs_dir()}: {HOW_TO_TRAIN}"
        ) from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def describe(runs: list[Path], source: str, tta: int) -> dict:
    """What /info reports: the runs, their models and holdout accuracy, how they combine."""
    rows = []
    for run in runs:
        metrics = _read_json(run / "metrics.json")
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
    if source.endswith("runs.json"):  # the pipeline's own choice of combination, for comparison
        submission = _read_json(paths.outputs_dir() / "submission.json")
        record["pipeline"] = {k: submission.get(k) for k in ("method", "cv_accuracy", "tta")}
    return record


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _serve(args) -> int:
    import torch
    import uvicorn

    from .predictor import Predictor
    from .serve import Limits, create_app

    runs, source = ([Path(r) for r in args.run], "--run") if args.run else default_runs()
    device = None if args.device == "auto" else args.device
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_run(runs, tta=args.tta, device=device)  # once, before serving
    given = {k: getattr(args, k) for k in ("max_images", "max_bytes", "max_pixels")}
    limits = Limits(**{k: v for k, v in given.items() if v is not None})  # None: the default
    app = create_app(predictor, info=describe(runs, source, args.tta), limits=limits)
    names = ", ".join(r.name for r in runs)
    log.info(f"serving {len(runs)} run(s) from {source}: {names} on {predictor.device}")
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
    p.add_argument(
        "--run",
        action="append",
        metavar="RUN_DIR",
        help="a run folder (repeat for an ensemble; default: the runs of the latest pipeline, "
        "else the newest run in outputs/runs)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    p.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="CPU threads per forward pass (default 1: concurrent requests use the other cores)",
    )
    p.add_argument("--tta", type=int, default=0, help="shift-TTA: average over 1 + N shifts")
    # Defaults live in serve.Limits (GET /info shows the ones in force).
    p.add_argument("--max-images", type=_positive, help="images in one request")
    p.add_argument("--max-bytes", type=_positive, help="bytes in one request body")
    p.add_argument("--max-pixels", type=_positive, help="width × height of one image")
    p.set_defaults(func=_serve)
