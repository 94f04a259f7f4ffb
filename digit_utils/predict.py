"""Batched inference on the model's device, with test-time augmentation by small pixel shifts."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError
from .models import NUM_CLASSES, normalize

# (dy, dx) pixel shifts for TTA, identity first; tta=k uses the first k + 1. Never flips: a
# mirrored 2 or 7 is not a digit.
SHIFTS: tuple[tuple[int, int], ...] = (
    (0, 0),
    (0, 1),
    (0, -1),
    (1, 0),
    (-1, 0),
    (1, 1),
    (-1, -1),
    (1, -1),
    (-1, 1),
)
MAX_TTA = len(SHIFTS) - 1


def tta_shifts(tta: int) -> tuple[tuple[int, int], ...]:
    """The shifts ``predict_proba(..., tta=tta)`` averages over."""
    if isinstance(tta, bool) or not isinstance(tta, int) or not 0 <= tta <= MAX_TTA:
        raise DataError(f"tta must be an integer in 0..{MAX_TTA}, got {tta!r}")
    return SHIFTS[: tta + 1]


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


def _autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images,
    *,
    tta: int = 0,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Class probabilities float32 ``[N,10]`` for uint8 ``[N,1,28,28]`` images.

    ``tta=k`` averages the softmax over the identity and the first k one-pixel shifts in SHIFTS.
    Runs on ``device`` (default: where the model's parameters are; otherwise the model is moved
    there, in place) in eval mode, then restores the model's train/eval mode.
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
                with _autocast(device):
                    logits = model(inp)
                probs += logits.float().softmax(dim=1)
            out[start : start + len(batch)] = (probs / len(shifts)).cpu()
    finally:
        model.train(was_training)
    return out.numpy()
