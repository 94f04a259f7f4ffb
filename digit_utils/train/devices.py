"""Which device and which arithmetic: the one resolver that training and inference share.

Precision follows the GPU's compute capability, not ``torch.cuda.is_bf16_supported()``: that
answers True on a T4 (sm_75) because it counts emulation, while cuDNN runs bf16 convolutions on
tensor cores only from sm_80 (Ampere). So "auto" is bf16 from sm_80, fp16 (with a GradScaler)
below it. On the CPU it is bf16 only where the CPU computes bf16 natively (``avx512_bf16`` or
``amx_bf16``: AMD Zen 4, Intel Sapphire Rapids and later), where fast_cnn trained 1.25-1.4x faster
than in fp32; elsewhere bf16 is emulated (10x slower than fp32 on a 2-core AMD Zen 3, measured
2026-12-01), so "auto" is fp32 there. ``DIGITS_CPU_BF16=0`` (or 1) overrides the CPU's answer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path

import torch

from digit_utils.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BF16_FROM = (8, 0)  # sm_80: native bf16 convolutions and matmuls
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic
CPU_BF16_ENV = "DIGITS_CPU_BF16"  # "0" or "1": overrides what /proc/cpuinfo says
CPUINFO = Path("/proc/cpuinfo")
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


@functools.cache
def _cpuinfo_flags(path: Path) -> frozenset[str]:
    """The CPU's feature flags from ``path`` (/proc/cpuinfo; empty where there is none)."""
    try:
        text = path.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (so bf16 autocast trains faster than fp32, not
    10x slower): ``DIGITS_CPU_BF16`` when it is "0" or "1", else the flags in /proc/cpuinfo."""
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    if override:
        raise ConfigError(f"{CPU_BF16_ENV}={override!r}: must be 0 or 1 (or unset)")
    return not _cpuinfo_flags(CPUINFO).isdisjoint(CPU_BF16_FLAGS)


def resolve_precision(name: str, device: torch.device) -> str:
    """ "auto" is bf16 from sm_80, fp16 below it; on the CPU bf16 where it is native, else fp32
    (and fp32 on MPS); fp16 needs CUDA."""
    if name == "auto":
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
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
