"""Independent jobs spread over devices: one worker process per device, each job run on its
worker's device, results in the order the jobs were given. Training runs (:mod:`parallel`) and
inference over many runs (:mod:`inference`) both go through here; a Kaggle T4 kernel has two GPUs.

Workers are started with "spawn" (CUDA cannot be used in a forked child) and receive the shared
arrays (the images) once each. With one device, or one job, everything runs in this process.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch

from digit_utils.errors import ConfigError
from digit_utils.train.devices import visible_devices

# fn(job, device, *shared): device is the worker's, or None when the job runs in this process
# (the job's own device setting then applies). fn must be picklable: a module-level function
# or a functools.partial of one.
Fn = Callable[..., Any]


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
def torch_threads(threads: int | None):
    """torch's CPU threads set to ``threads`` inside the block (None: unchanged)."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


_WORKER: dict = {}


def _start_worker(devices, shared: tuple, threads: int) -> None:
    device = torch.device(devices.get())  # each worker takes one device off the queue
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # "cuda" and the current device now mean this GPU
    _WORKER.update(device=device, shared=shared)


def _call(fn: Fn, job) -> Any:
    return fn(job, _WORKER["device"], *_WORKER["shared"])


def run_all(
    fn: Fn,
    jobs: Sequence,
    devices: Sequence[torch.device],
    shared: tuple = (),
    *,
    threads: int | None = None,
    done: Callable[[], None] = lambda: None,
) -> list:
    """``[fn(job, device, *shared) for job in jobs]``, over one worker per entry of ``devices``;
    ``done()`` is called as each job finishes, and the first failure stops the rest.

    ``threads`` sets torch's CPU threads of every job (default: this process's own, shared
    between the workers), so give the same number to compare two ways of running bit for bit.
    """
    if not jobs:
        return []
    if len(devices) == 1 or len(jobs) == 1:
        results = []
        with torch_threads(threads):
            for job in jobs:
                results.append(fn(job, None, *shared))
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
        initargs=(queue, shared, threads),
    ) as pool:
        futures = [pool.submit(_call, fn, job) for job in jobs]
        try:
            for future in as_completed(futures):
                future.result()  # the first failure stops the rest
                done()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]
