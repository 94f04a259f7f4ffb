"""A run's checkpoints (``best.pt``, ``last.pt``): what they hold (config, package version, data
fingerprint, weights, EMA, optimizer, scaler, RNG states), saving them atomically, the fp16
weights a Kaggle kernel's output keeps, and loading a finished run's model. Where they live is
the run folder's business (:mod:`runs`)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digit_utils import __version__, atomic
from digit_utils.config import TrainConfig
from digit_utils.errors import CheckpointError, ConfigError
from digit_utils.train.models import build_model
from digit_utils.train.runs import BEST, LAST, check_complete

CHECKPOINT_FORMAT = "digit_utils.checkpoint/1"


def save_checkpoint(payload: dict, path: Path) -> Path:
    """torch.save atomically (a kill or error mid-write leaves the previous file intact)."""
    return atomic.atomic_write(path, lambda fh: torch.save(payload, fh), mode="wb")


def checkpoint_header(cfg: TrainConfig, fingerprint: str) -> dict:
    """The provenance every checkpoint of a run carries."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "config": cfg.to_dict(),
        "data_fingerprint": fingerprint,
    }


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's payload (tensors on CPU); CheckpointError if missing, truncated, foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint (truncated or corrupt?): "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a digit_utils checkpoint (no {CHECKPOINT_FORMAT!r})")
    return payload


def rng_state(gen: torch.Generator) -> dict:
    """Every RNG the loop draws from, for an exact resume, with the machine they belong to."""
    np_state = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "device_type": gen.device.type,  # a CUDA generator's state means nothing to a CPU one
        "gpus": len(cuda),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
        "generator": gen.get_state(),  # the per-epoch permutation and augmentation draws
    }


def rng_fits(state: dict, gen: torch.Generator) -> bool:
    """Whether saved RNG states can be restored here: same kind of generator, same GPU count."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # checkpoints from before the device was recorded: a generator state's size tells its kind
    same_kind = state.get("device_type", gen.device.type) == gen.device.type and len(
        state["generator"]
    ) == len(gen.get_state())
    return same_kind and state.get("gpus", len(state["cuda"])) in (0, gpus)


def set_rng_state(state: dict, gen: torch.Generator, *, seed: int, epoch: int) -> bool:
    """Restore the saved RNG states; True when all of them were.

    The CPU, numpy and Python states always restore. On another kind of machine (a CUDA run
    resumed on the CPU, two GPUs' states on a one-GPU machine) the device generators are reseeded
    from ``(seed, epoch)`` instead and False is returned: the run goes on, but not bit-identically.
    """
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if not rng_fits(state, gen):
        derived = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
        gen.manual_seed(derived)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(derived)
        return False
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["generator"])
    return True


FP16_MAX = float(torch.finfo(torch.float16).max)


def half_weights(state: dict) -> dict:
    """A state dict for a Kaggle kernel's output: fp32 tensors stored in fp16 (half the bytes;
    tests/test_kaggle_output.py checks a model's predictions do not move), except a tensor fp16
    cannot hold (a value past its range). Integers (BatchNorm's counters) stay as they are;
    ``load_state_dict`` casts back to the model's own dtype."""

    def half(t: torch.Tensor) -> torch.Tensor:
        fits = t.dtype == torch.float32 and (t.numel() == 0 or float(t.abs().max()) <= FP16_MAX)
        return t.half() if fits else t

    return {k: half(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def load_weights(model: nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e)[:300]})") from None


def load_run(
    run_dir: str | Path,
    which: str = "best",
    device: str | torch.device = "cpu",
    *,
    require_complete: bool = True,
) -> tuple[nn.Module, TrainConfig]:
    """The model of a run folder's ``best.pt`` or ``last.pt`` in eval mode, and its config.

    A checkpoint of an unfinished or mixed run folder is refused unless ``require_complete``
    is off (training itself, reloading its final weights before the folder is complete)."""
    if which not in ("best", "last"):
        raise ConfigError(f"which: expected 'best' or 'last', got {which!r}")
    path = Path(run_dir) / (BEST if which == "best" else LAST)
    if which == "best" and not path.exists() and (path.parent / LAST).is_file():
        raise CheckpointError(
            f"{path}: not kept (a Kaggle kernel's output keeps a run's final weights only, "
            "last.pt); load which='last' (--which last)"
        )
    payload = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(payload["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: stored config is invalid ({e})") from None
    model = build_model(cfg.model)
    # last.pt also holds the raw weights; the EMA weights are the ones that were evaluated
    load_weights(model, payload.get("ema") or payload["model"], path)
    if require_complete:
        check_complete(run_dir, [path.name])
    return model.to(device).eval(), cfg
