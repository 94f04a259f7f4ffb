"""Independent training runs spread over devices (:mod:`pool`: one worker process per device,
each run pinned to its worker's device; a Kaggle T4 kernel has two GPUs, and a grid's runs do not
depend on each other). Every independent training job goes through here: grids, refits on all
rows, and runs with extra rows of their own (the pseudo-labelled second round), whose extra rows
travel to the worker with the job.

Every run seeds all its RNGs from its own config, so where it runs does not change what it
computes: on the CPU, with the same number of torch threads, the workers' results equal a
sequential run's bit for bit. Each worker loads the images once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from digit_utils.config import TrainConfig
from digit_utils.train.loop import TrainResult, train
from digit_utils.train.pool import run_all, worker_devices

Extra = tuple[np.ndarray, np.ndarray]  # extra training rows of one run: uint8 images, labels
# a run's config and its run folder, and optionally its extra rows (never validated)
Job = tuple[TrainConfig, Path] | tuple[TrainConfig, Path, Extra | None]


__all__ = ["Job", "train_all", "worker_devices"]


def _train_job(job: Job, device, images, labels, *, quiet: bool) -> TrainResult:
    """Train one job; a worker's ``device`` pins a run whose config says "auto" (its metrics
    then name the GPU that trained it), and its model travels back through the CPU."""
    cfg, run_dir, extra = (*job, None)[:3]
    if device is not None and cfg.device == "auto":
        cfg = cfg.replace(device=str(device))
    x_extra, y_extra = extra if extra is not None else (None, None)
    result = train(cfg, images, labels, run_dir=Path(run_dir),
                   quiet=quiet or device is not None,  # a worker draws no bar
                   extra_images=x_extra, extra_labels=y_extra)  # fmt: skip
    if device is not None:
        result.model.cpu()  # tensors travel back to the parent process through the CPU
    return result


def train_all(
    jobs: Sequence[Job],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    workers: int | str = "auto",
    threads: int | None = None,
    quiet: bool = True,
    done: Callable[[], None] = lambda: None,
) -> list[TrainResult]:
    """Train every job, in the order given; ``done()`` is called as each run finishes. A job
    is ``(config, run folder)`` or ``(config, run folder, (extra images, extra labels))``.

    One worker (a CPU, one GPU) trains in this process; several train in worker processes.
    ``threads`` sets torch's CPU threads of every run (default: this process's own, shared
    between the workers), so give the same number to compare two ways of running bit for bit.
    """
    if not jobs:
        return []
    devices = worker_devices(jobs[0][0].device, workers)
    fn = partial(_train_job, quiet=quiet)
    shared = (np.asarray(images), np.asarray(labels))
    return run_all(fn, jobs, devices, shared, threads=threads, done=done)
