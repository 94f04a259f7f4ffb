"""What experiment tracking costs a training epoch.

Trains the same small run with ``tracking`` none and mlflow,tensorboard for several seeds and
prints, per setting, the median seconds of an epoch's training (history.csv), the median time of
one epoch-end tracker call (MLflow log_batch + TensorBoard scalars and flush), and the one-off
start and finish (the MLflow import and store, the artifacts). The per-epoch call is outside the
timed epoch by design; this shows how small it is next to it. Not a test: run it by hand, e.g.

    python benchmarks/tracking_overhead.py --seeds 0 1 2 --rows 2000 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from digit_utils import data
from digit_utils.config import TrainConfig
from digit_utils.train import tracking
from digit_utils.train.loop import train


def timed(method, bucket: list):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            bucket.append(time.perf_counter() - t0)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="simple_cnn")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    images, labels = data.load_train(data.locate(None))
    images, labels = images[: args.rows], labels[: args.rows]
    calls = {"start": [], "epoch": [], "finish": []}
    tracking.start_run = timed(tracking.start_run, calls["start"])
    tracking.RunTracking.epoch = timed(tracking.RunTracking.epoch, calls["epoch"])
    tracking.RunTracking.finish = timed(tracking.RunTracking.finish, calls["finish"])
    print(f"{args.model}, {args.rows} rows, {args.epochs} epochs, seeds {args.seeds}; "
          f"{platform.machine()} CPU, {os.cpu_count()} cores, torch threads shared")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DIGITS_OUTPUTS"] = tmp
        for setting in ("none", "mlflow,tensorboard"):
            for bucket in calls.values():
                bucket.clear()
            epoch_s = []
            for seed in args.seeds:
                cfg = TrainConfig(model=args.model, epochs=args.epochs, seed=seed,
                                  tracking=setting, name=f"{setting}-{seed}")  # fmt: skip
                result = train(cfg, images, labels, quiet=True)
                epoch_s += list(result.history["seconds"])
            ms = {k: 1000 * statistics.median(v) if v else float("nan") for k, v in calls.items()}
            print(f"tracking={setting:<20} epoch {statistics.median(epoch_s):6.2f} s (median of "
                  f"{len(epoch_s)}, sd {np.std(epoch_s):.2f}); tracker per epoch "
                  f"{ms['epoch']:6.1f} ms; start {ms['start']:7.0f} ms; finish "
                  f"{ms['finish']:6.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
