"""All inference: batched probabilities with shift-TTA, trained runs on new images (their runs
spread over every visible GPU, :mod:`pool`), the out-of-fold probabilities of a set of runs, and
inference timing."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digit_utils import ensemble, splits
from digit_utils.augment_policy import tta_shifts
from digit_utils.errors import ConfigError, DataError
from digit_utils.train import checkpoints, runs
from digit_utils.train.devices import autocast, resolve_device, synchronize
from digit_utils.train.models import NUM_CLASSES, normalize
from digit_utils.train.pool import run_all, worker_devices


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate (B,C,H,W) by whole pixels, filling with background zeros (no wrap-around)."""
    if dy == dx == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))  # shifts are at most one pixel
    return padded[..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def as_image_tensor(images) -> torch.Tensor:
    """Check the ``uint8 [N,1,28,28]`` contract and return a tensor (no copy when possible)."""
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise DataError(f"images must be a numpy array or tensor, got {type(images).__name__}")
    if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise DataError(f"images must be uint8 [N,1,28,28], got {x.dtype} {tuple(x.shape)}")
    return x


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images,
    *,
    tta: int = 0,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Class probabilities float32 ``[N,10]`` for uint8 ``[N,1,28,28]`` images.

    ``tta=k`` averages the softmax over the identity and the first k one-pixel shifts in SHIFTS.
    Runs on ``device`` (default: where the model's parameters are; otherwise the model is moved
    there, in place) in eval mode, then restores the model's train/eval mode. ``precision`` is
    a run's setting ("auto" resolves by device, as training does), so a run is scored in the
    arithmetic it trained with.
    """
    x = as_image_tensor(images)
    shifts = tta_shifts(tta)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    was_training = model.training
    model.eval()
    out = torch.empty(len(x), NUM_CLASSES, dtype=torch.float32)
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device, non_blocking=True)
            probs = torch.zeros(len(batch), NUM_CLASSES, device=device)
            for dy, dx in shifts:
                inp = normalize(shift(batch, dy, dx))
                if device.type == "cuda":
                    inp = inp.contiguous(memory_format=torch.channels_last)
                with autocast(device, precision):
                    logits = model(inp)
                probs += logits.float().softmax(dim=1)
            out[start : start + len(batch)] = (probs / len(shifts)).cpu()
    finally:
        model.train(was_training)
    return out.numpy()


def _predict_run(job, worker_device, images, *, tta: int, device) -> np.ndarray:
    """One run's probabilities on ``images[rows]`` (all images when rows is None), on the
    worker's device, or in this process on ``device``."""
    run, rows = job
    dev = worker_device if worker_device is not None else resolve_device(device)
    model, cfg = checkpoints.load_run(run, which="last", device=dev)
    x = images if rows is None else images[rows]
    return predict_proba(model, x, tta=tta, device=dev, precision=cfg.precision)


def predict_each(
    jobs, images, *, tta: int = 0, device: str | None = None, workers: int | str = "auto",
    threads: int | None = None,
) -> list[np.ndarray]:  # fmt: skip
    """Each run's probabilities ``float32 [n,10]`` for jobs ``(run folder, rows or None)``, in
    order, over every visible GPU at once when ``device`` is None or "auto" (one worker per
    GPU; in this process with one device). Where a run is scored does not change its numbers
    beyond the device's own arithmetic: on the CPU with the same ``threads``, bit for bit."""
    images = as_image_tensor(images).numpy() if isinstance(images, torch.Tensor) else images
    devices = worker_devices("auto" if device in (None, "auto") else device, workers)
    fn = partial(_predict_run, tta=tta, device=device)
    return run_all(fn, list(jobs), devices, (np.asarray(images),), threads=threads)


def predict_runs(
    run_dirs, images, *, tta: int = 0, device: str | None = None, workers: int | str = "auto",
    threads: int | None = None,
) -> np.ndarray:  # fmt: skip
    """Each base model's probabilities on ``images`` (uint8 [N,1,28,28]): ``float32 [K,N,10]``.

    A base model made of several fold runs averages its runs' probabilities. ``device`` None
    (or "auto") spreads the runs over every visible GPU (:func:`predict_each`), else the CPU;
    a named device scores them all there.
    """
    as_image_tensor(images)  # the contract, checked here before any worker starts
    groups = runs.as_groups(run_dirs)
    jobs = [(run, None) for group in groups.values() for run in group]
    probas = iter(predict_each(jobs, images, tta=tta, device=device, workers=workers,
                               threads=threads))  # fmt: skip
    out = [np.mean([next(probas) for _ in group], axis=0, dtype=np.float32)
           for group in groups.values()]  # fmt: skip
    return np.stack(out).astype(np.float32)


def load_oof(
    run_dirs,
    *,
    images=None,
    tta: int | None = None,
    device: str | None = None,
    rows: str = "same",
) -> ensemble.OutOfFold:
    """Out-of-fold probabilities of a set of runs on the rows that no base model trained on.

    By default each run's saved ``val_proba.npy`` is used (made with the run's own TTA). With
    ``tta`` given, the final checkpoints are re-run on ``images[val_indices]`` with that TTA.
    Every base model must hold out the same rows (``rows="intersect"`` keeps the shared ones);
    see :func:`ensemble.out_of_fold`. A refusal says how each model was split (config.json).
    """
    groups = runs.as_groups(run_dirs)
    if tta is not None and images is None:
        raise ConfigError("tta: re-predicting the validation rows needs the train images")
    saved = {run: runs.read_validation(run) for group in groups.values() for run in group}
    if tta is not None:  # every run re-predicts its own rows, over every GPU at once
        fresh = predict_each([(run, idx) for run, (idx, _) in saved.items()], images, tta=tta,
                             device=device)  # fmt: skip
        saved = {run: (idx, p) for (run, (idx, _)), p in zip(saved.items(), fresh, strict=True)}
    parts = {name: [saved[run] for run in group] for name, group in groups.items()}
    splits_of = {
        name: splits.describe([runs.read_config(run) for run in group])
        for name, group in groups.items()
    }
    return ensemble.out_of_fold(parts, groups, splits=splits_of, rows=rows)


def inference_ms(model: nn.Module, images: np.ndarray, device: str = "auto") -> float:
    """Median milliseconds to predict 1,000 images in one batch (after a warm-up)."""
    dev = resolve_device(device)
    batch = images[:1000]
    model = model.to(dev)
    predict_proba(model, batch, device=dev)  # warm-up: kernels, caches, lazy init
    times = []
    for _ in range(3):
        synchronize(dev)  # that device's queue, which need not be the current device's
        start = time.perf_counter()
        predict_proba(model, batch, device=dev)
        synchronize(dev)
        times.append((time.perf_counter() - start) * 1000 * 1000 / len(batch))
    return float(np.median(times))
