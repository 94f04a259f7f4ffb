"""Which device and which arithmetic: the one resolver that training and inference share."""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """ "auto" (or None) is CUDA when available, else the CPU; a named device must exist here."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(name, torch.device):
        device = name
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise ConfigError(
                f"device: {name!r} is not a device name ('auto', 'cpu', 'cuda', 'cuda:0', …)"
            ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device: {str(name)!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device: {str(name)!r} requested but there are {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {str(name)!r} requested but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device: {str(name)!r} is not supported here (cpu, cuda, mps)")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """ "auto" is bf16 (or fp16) on CUDA and fp32 on the CPU; fp16 needs CUDA."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("precision: 'fp16' needs CUDA (use 'fp32' or 'bf16' on CPU)")
    return name


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = AMP_DTYPES.get(resolve_precision(precision, device))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
