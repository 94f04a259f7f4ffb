"""From `digits serve`'s settings to a loaded app, in the server process or in each worker.

The settings are plain JSON (the runs, TTA, device, threads, limits): a worker process started by
uvicorn's supervisor rebuilds the app from them (:func:`app_from_env`), loading its own copy of
the models, so that every core answers requests instead of one Python interpreter.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from digit_utils import paths
from digit_utils.errors import ConfigError
from digit_utils.serve.inputs import Limits

SETTINGS_ENV = "DIGITS_SERVE_SETTINGS"  # how the settings reach uvicorn's worker processes
DEFAULT_SOURCE = (
    "default: the newest run list's runs (the ensemble's members), else the newest run"
)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def describe(runs: list[Path], source: str, tta: int) -> dict:
    """What /info reports: the runs loaded, their models and holdout accuracy, how they combine,
    and how the latest submission combined them."""
    from digit_utils.train.runs import read_metrics  # torch: only once a server starts

    rows = []
    for run in runs:
        metrics = read_metrics(run)
        rows.append(
            {
                "name": run.name,
                "loaded_from": str(run),
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
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    submission = _read_json(paths.outputs_dir() / "submission.json")
    if source == DEFAULT_SOURCE and submission:  # how the latest pipeline combined them
        record["pipeline"] = {k: submission.get(k) for k in ("method", "cv_accuracy", "tta")}
    return record


def build_app(settings: dict):
    """Load the runs named in ``settings`` and wrap them in the app (models load once, here)."""
    import torch

    from digit_utils.serve.app import create_app
    from digit_utils.serve.predictor import Predictor

    torch.set_num_threads(settings["threads"])
    runs = [Path(r) for r in settings["runs"]]
    predictor = Predictor.from_run(runs, tta=settings["tta"], device=settings["device"])
    info = describe(runs, settings["source"], settings["tta"])
    return create_app(predictor, info=info, limits=Limits(**settings["limits"]))


def app_from_env():
    """uvicorn's factory in each worker process: the app from the settings the parent left in
    the environment."""
    return build_app(json.loads(os.environ[SETTINGS_ENV]))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model loads: a busy port, a port out of range or
    an address this machine does not have is one clear error, not a failure after loading."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is a number from 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host}: not an address to listen on ({e})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what uvicorn itself sets
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        where = f"--host {host} --port {port}"
        raise ConfigError(f"{where}: cannot listen there ({e.strerror})") from None
    sock.set_inheritable(True)  # worker processes serve on the same socket
    return sock
