"""Which device and which arithmetic: the one resolver that training and inference share.

Precision follows the GPU's compute capability, not ``torch.cuda.is_bf16_supported()``: that
answers True on a T4 (sm_75) because it counts emulation, while cuDNN runs bf16 convolutions on
tensor cores only from sm_80 (Ampere). So "auto" is bf16 from sm_80, fp16 (with a GradScaler)
below it, and fp32 on the CPU.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from digit_utils.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_FROM = (8, 0)  # sm_80: native bf16 convolutions and matmuls
TRITON_FROM = (7, 0)  # torch.compile's Triton backend refuses older GPUs (a P100 is sm_60)


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """ "auto" (or None) is the current CUDA device when there is one, else the CPU; a named
    device must exist here. A CUDA device always carries its index (``cuda:1``), so the run's
    timings and capability checks apply to it and not to whichever device is current."""
    if name is None or name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())
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
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= count:
            raise ConfigError(f"device: {str(name)!r} requested but there are {count} CUDA GPU(s)")
        device = torch.device("cuda", index)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {str(name)!r} requested but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device: {str(name)!r} is not supported here (cpu, cuda, mps)")
    return device


def capability(device: torch.device) -> tuple[int, int]:
    """The CUDA compute capability of ``device`` (e.g. (7, 5) for a T4)."""
    return tuple(torch.cuda.get_device_capability(device))


def resolve_precision(name: str, device: torch.device) -> str:
    """ "auto" is bf16 from sm_80, fp16 below it, fp32 on the CPU; fp16 needs CUDA."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if capability(device) >= BF16_FROM else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("precision: 'fp16' needs CUDA (use 'fp32' or 'bf16' on CPU)")
    return name


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for fp32)."""
    return AMP_DTYPES.get(precision)


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32). A run trained in
    fp16 on a GPU is scored in fp32 on a CPU, which has no fp16 autocast."""
    if precision == "fp16" and device.type != "cuda":
        return contextlib.nullcontext()
    dtype = amp_dtype(resolve_precision(precision, device))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compile_blocker(device: torch.device, precision: str) -> str | None:
    """Why ``torch.compile`` cannot work on ``device`` in ``precision`` (None when it can)."""
    if device.type != "cuda":
        return None
    cap = capability(device)
    name = f"sm_{cap[0]}{cap[1]}"
    if cap < TRITON_FROM:
        return f"Triton needs a GPU of compute capability 7.0 or newer; this one is {name}"
    if precision == "bf16" and cap < BF16_FROM:
        return f"bf16 under TorchInductor fails on {name} (bf16 needs sm_80)"
    return None


def maybe_compile(model: torch.nn.Module, enabled: bool, device: torch.device, precision: str):
    """``torch.compile(model)`` when asked and possible; otherwise the eager model, with one
    warning saying why when compiling was asked for."""
    if not enabled:
        return model
    if reason := compile_blocker(device, precision):
        warnings.warn(f"compile=True ignored, training eagerly: {reason}", stacklevel=2)
        return model
    return torch.compile(model)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (timings); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def visible_devices(device: str = "auto") -> list[torch.device]:
    """The devices a grid of runs may spread over: every visible GPU for "auto", otherwise the
    one device named (the CPU when there is no GPU)."""
    if device == "auto" and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [resolve_device(device)]
