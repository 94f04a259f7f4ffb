"""Independent training runs spread over devices: one worker process per device, each run pinned
to its worker's device (a Kaggle T4 kernel has two GPUs; a grid's runs do not depend on each
other). Every independent training job goes through here: grids, refits on all rows, and runs
with extra rows of their own (the pseudo-labelled second round), whose extra rows travel to the
worker with the job.

Every run seeds all its RNGs from its own config, so where it runs does not change what it
computes: on the CPU, with the same number of torch threads, the workers' results equal a
sequential run's bit for bit. Workers are started with "spawn" (CUDA cannot be used in a forked
child) and load the images once each.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from digit_utils.config import TrainConfig
from digit_utils.errors import ConfigError
from digit_utils.train.devices import visible_devices
from digit_utils.train.loop import TrainResult, train

Extra = tuple[np.ndarray, np.ndarray]  # extra training rows of one run: uint8 images, labels
# a run's config and its run folder, and optionally its extra rows (never validated)
Job = tuple[TrainConfig, Path] | tuple[TrainConfig, Path, Extra | None]


def worker_devices(device: str = "auto", workers: int | str = "auto") -> list[torch.device]:
    """The device of each worker: "auto" is one worker per visible GPU (one on the CPU);
    a number of workers shares the devices round robin (several CPU workers, for tests)."""
    devices = visible_devices(device)
    if workers == "auto":
        return devices
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: 'auto' or a positive integer, got {workers!r}")
    return [devices[i % len(devices)] for i in range(workers)]


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


# --------------------------------------------------------------------------------------------
# Inside a worker process

_WORKER: dict = {}


def _start_worker(devices, images: np.ndarray, labels: np.ndarray, threads: int) -> None:
    device = torch.device(devices.get())  # each worker takes one device off the queue
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # "cuda" and the current device now mean this GPU
    _WORKER.update(device=device, images=images, labels=labels)


def _train_job(job: Job, images, labels, *, quiet: bool, device=None) -> TrainResult:
    """Train one job here; ``device`` pins a run whose config says "auto" to a worker's device
    (its metrics then name the GPU that trained it)."""
    cfg, run_dir, extra = (*job, None)[:3]
    if device is not None and cfg.device == "auto":
        cfg = cfg.replace(device=str(device))
    x_extra, y_extra = extra if extra is not None else (None, None)
    return train(cfg, images, labels, run_dir=Path(run_dir), quiet=quiet,
                 extra_images=x_extra, extra_labels=y_extra)  # fmt: skip


def _run_job(job: Job) -> TrainResult:
    result = _train_job(job, _WORKER["images"], _WORKER["labels"], quiet=True,
                        device=_WORKER["device"])  # fmt: skip
    result.model.cpu()  # tensors travel back to the parent process through the CPU
    return result


# --------------------------------------------------------------------------------------------
# In the caller


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
    if len(devices) == 1 or len(jobs) == 1:
        results = []
        with _torch_threads(threads):
            for job in jobs:
                results.append(_train_job(job, images, labels, quiet=quiet))
                done()
        return results
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    for device in devices:
        queue.put(str(device))
    threads = threads or max(1, torch.get_num_threads() // len(devices))
    with ProcessPoolExecutor(
        max_workers=len(devices),
        mp_context=ctx,
        initializer=_start_worker,
        initargs=(queue, np.asarray(images), np.asarray(labels), threads),
    ) as pool:
        futures = [pool.submit(_run_job, job) for job in jobs]
        try:
            for future in as_completed(futures):
                future.result()  # the first failure stops the grid
                done()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]
