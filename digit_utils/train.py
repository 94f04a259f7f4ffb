"""Training: one frozen config, a plain loop on device-resident data, checkpoints and resume.

The loop keeps the uint8 images on the device, takes batches as slices of a per-epoch
permutation, and normalises and augments there. The learning rate is a pure function of the step,
so the "scheduler state" in a checkpoint is just the step. Every random draw of the loop comes from
RNGs whose states are saved at the end of each epoch, so a resumed run repeats the interrupted
epoch exactly and ends with bit-identical weights on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import random
import time
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import __version__, atomic, paths
from .augment import AugmentPolicy, augment_batch
from .errors import CheckpointError, ConfigError, DataError
from .models import build_model, count_parameters, list_models, normalize
from .predict import MAX_TTA, as_image_tensor, predict_proba

CHECKPOINT_FORMAT = "digit_utils.checkpoint/1"
DEFAULT_EMA_DECAY = 0.999
# Config fields that may differ between a run and its resumption without changing the maths.
RESUME_MAY_CHANGE = {"name", "device", "compile"}


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of a run; the flat dict form is a notebook's papermill parameters."""

    model: str = "fast_cnn"
    epochs: int = 2
    batch_size: int = 128
    optimizer: str = "adamw"  # "adamw" | "sgd" (Nesterov, momentum 0.9)
    lr: float = 0.003  # peak learning rate
    schedule: str = "onecycle"  # "onecycle" (linear up, linear down) | "cosine"
    warmup_epochs: float = 0.3  # epochs of linear warm-up to the peak
    weight_decay: float = 5e-4  # on conv/linear weights only, not on BatchNorm or biases
    label_smoothing: float = 0.1
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0 = off
    augment: str | dict = "none"  # a preset name of augment.PRESETS or an AugmentPolicy dict
    val_fraction: float = 0.1  # stratified holdout; 0 trains on everything (no validation)
    fold: int | None = None  # when set, validate on this fold of an n_folds stratified k-fold
    n_folds: int = 5
    seed: int = 0
    split_seed: int = 0  # seed of the holdout/k-fold split: runs that are ensembled share it
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "auto"  # "auto" (bf16/fp16 on CUDA, fp32 on CPU) | "fp32" | "bf16" | "fp16"
    compile: bool = False  # torch.compile the training forward pass
    tta: int = 0  # shifts averaged for the saved validation probabilities (predict.SHIFTS)
    name: str | None = None  # run folder name; default <model>-seed<seed>-<timestamp>

    def __post_init__(self):
        types = {
            "model": str, "epochs": int, "batch_size": int, "optimizer": str, "lr": float,
            "schedule": str, "warmup_epochs": float, "weight_decay": float,
            "label_smoothing": float, "ema": float, "augment": (str, dict),
            "val_fraction": float, "fold": (int, type(None)), "n_folds": int, "seed": int,
            "split_seed": int,
            "device": str, "precision": str, "compile": bool, "tta": int,
            "name": (str, type(None)),
        }  # fmt: skip
        for f in fields(self):
            value, want = getattr(self, f.name), types[f.name]
            if f.name == "ema" and isinstance(value, bool):  # ema=True means the default decay
                value = DEFAULT_EMA_DECAY if value else 0.0
            elif want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # accept 1 where 1.0 is meant
            want_t = want if isinstance(want, tuple) else (want,)
            if (isinstance(value, bool) and bool not in want_t) or not isinstance(value, want_t):
                names = " or ".join(t.__name__ for t in want_t)
                raise ConfigError(f"{f.name}: expected {names}, got {value!r}")
            object.__setattr__(self, f.name, value)
        self._check_values()

    def _check_values(self) -> None:
        def bad(field, why):
            raise ConfigError(f"{field}: {getattr(self, field)!r} {why}")

        if self.model not in list_models():
            bad("model", f"is not a known model ({', '.join(list_models())})")
        for field in ("epochs", "batch_size", "n_folds"):
            if getattr(self, field) < (2 if field == "n_folds" else 1):
                bad(field, "is too small")
        if self.optimizer not in ("sgd", "adamw"):
            bad("optimizer", "must be 'sgd' or 'adamw'")
        if self.schedule not in ("onecycle", "cosine"):
            bad("schedule", "must be 'onecycle' or 'cosine'")
        if not self.lr > 0:
            bad("lr", "must be positive")
        if not 0 <= self.warmup_epochs <= self.epochs:
            bad("warmup_epochs", f"must be within [0, epochs={self.epochs}]")
        if self.weight_decay < 0:
            bad("weight_decay", "must be ≥ 0")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1)")
        if not 0 <= self.ema < 1:
            bad("ema", "must be a decay in [0, 1) (or True/False)")
        if not 0 <= self.val_fraction < 1:
            bad("val_fraction", "must be in [0, 1)")
        if self.fold is not None and not 0 <= self.fold < self.n_folds:
            bad("fold", f"must be in [0, n_folds={self.n_folds})")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            bad("precision", "must be 'auto', 'fp32', 'bf16' or 'fp16'")
        if not 0 <= self.tta <= MAX_TTA:
            bad("tta", f"must be in [0, {MAX_TTA}]")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                bad("device", "is not a device name ('auto', 'cpu', 'cuda', 'cuda:0', …)")
        if self.name is not None and (not self.name or set(self.name) & set("/\\:")):
            bad("name", "must be a non-empty folder name")
        self.policy  # noqa: B018  (validates the augmentation spec)

    @property
    def policy(self) -> AugmentPolicy:
        return AugmentPolicy.parse(self.augment)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a flat dict; unknown keys, wrong types and bad values raise ConfigError."""
        known = [f.name for f in fields(cls)]
        if unknown := sorted(set(d) - set(known)):
            raise ConfigError(f"unknown training parameter(s) {unknown}; known: {known}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Splits, schedule, devices


def holdout_split(labels, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train_idx, val_idx), both sorted int64; val_fraction=0 -> no val."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels), dtype=np.int64)
    if val_fraction == 0:
        return idx, np.empty(0, np.int64)
    try:
        tr, va = train_test_split(
            idx, test_size=val_fraction, stratify=np.asarray(labels), random_state=seed
        )
    except ValueError as e:
        raise ConfigError(
            f"val_fraction={val_fraction}: cannot split these labels ({e})"
        ) from None
    return np.sort(tr), np.sort(va)


def kfold_splits(labels, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded k-fold (train_idx, val_idx) pairs; each val_idx sorted int64."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    idx = np.arange(len(labels), dtype=np.int64)
    try:
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(idx, labels)
        return [(np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64)) for tr, va in folds]
    except ValueError as e:
        raise ConfigError(f"n_folds={n_folds}: cannot split these labels ({e})") from None


def split_for(cfg: TrainConfig, labels) -> tuple[np.ndarray, np.ndarray]:
    """The config's split: fold ``cfg.fold`` of a k-fold when set, else the holdout."""
    if cfg.fold is not None:
        return kfold_splits(labels, cfg.n_folds, cfg.split_seed)[cfg.fold]
    return holdout_split(labels, cfg.val_fraction, cfg.split_seed)


def learning_rate(step: int, total: int, peak: float, warmup: int, schedule: str) -> float:
    """LR at a 0-based step: linear warm-up, then linear (onecycle) or cosine decay to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "onecycle":
        return peak * (1 - progress)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("precision: 'fp16' needs CUDA (use 'fp32' or 'bf16' on CPU)")
    return name


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A short hash of the training arrays (provenance; a resume checks it)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(images.cpu().contiguous().numpy().tobytes())
    h.update(labels.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Atomic files and checkpoints


def save_checkpoint(payload: dict, path: Path) -> Path:
    """torch.save atomically (a kill or error mid-write leaves the previous file intact)."""
    return atomic.atomic_write(path, lambda fh: torch.save(payload, fh), mode="wb")


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


def _rng_state(gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
        "generator": gen.get_state(),  # the per-epoch permutation and augmentation draws
    }


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    gen.set_state(state["generator"])


def _load_weights(model: nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e)[:300]})") from None


def load_run(
    run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """The model of a run folder's ``best.pt`` or ``last.pt`` in eval mode, and its config."""
    if which not in ("best", "last"):
        raise ConfigError(f"which: expected 'best' or 'last', got {which!r}")
    path = Path(run_dir) / f"{which}.pt"
    payload = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(payload["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: stored config is invalid ({e})") from None
    model = build_model(cfg.model)
    # last.pt also holds the raw weights; the EMA weights are the ones that were evaluated
    _load_weights(model, payload.get("ema") or payload["model"], path)
    return model.to(device).eval(), cfg


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    model: nn.Module  # the final weights (EMA ones when EMA is on), eval mode
    history: pd.DataFrame  # one row per epoch
    metrics: dict
    run_dir: Path
    val_idx: np.ndarray  # int64 indices into the full train set
    val_proba: np.ndarray  # float32 [n_val, 10], best model, config's TTA
    config: TrainConfig


def _check_data(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_image_tensor(images)
    y = torch.as_tensor(labels)
    if y.dtype != torch.int64 or y.shape != (len(x),):
        raise DataError(f"labels must be int64 [{len(x)}], got {y.dtype} {tuple(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"labels must be digits 0–9, found {int(y.min())}…{int(y.max())}")
    return x, y


def _resolve_run_dir(cfg: TrainConfig, run_dir, resume: bool) -> Path:
    if run_dir is not None:
        return Path(run_dir)
    if cfg.name is None:
        if resume:
            raise ConfigError("resume=True needs a run name (config 'name') or run_dir")
        fold = f"-fold{cfg.fold}" if cfg.fold is not None else ""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return paths.runs_dir() / f"{cfg.model}-seed{cfg.seed}{fold}-{stamp}"
    return paths.runs_dir() / cfg.name


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Decay only weight matrices/kernels: decaying BatchNorm scales and biases just hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.is_floating_point():
            e.lerp_(m, 1 - decay)
        else:
            e.copy_(m)  # BatchNorm's num_batches_tracked


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(val loss, val accuracy) with plain cross-entropy; NaN when there are no rows."""
    if len(x) == 0:
        return float("nan"), float("nan")
    proba = torch.from_numpy(predict_proba(model, x))
    y = y.cpu()
    loss = -proba[torch.arange(len(y)), y].clamp_min(1e-12).log().mean()
    return float(loss), float((proba.argmax(1) == y).float().mean())


def _append_runs_table(row: dict, table: Path) -> None:
    frame = pd.read_csv(table) if table.is_file() else pd.DataFrame()
    frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
    atomic.write_csv(frame, table)


def train(
    cfg: TrainConfig, images, labels, *, run_dir=None, resume: bool = False, quiet: bool = False
) -> TrainResult:
    """Train ``cfg.model`` on the full train set (the config picks the validation rows).

    ``images`` uint8 [N,1,28,28] and ``labels`` int64 [N]. Writes the run folder (default
    ``outputs/runs/<name>``) and appends a row to ``runs.csv`` in the folder holding it.
    ``resume=True`` continues from ``last.pt`` when there is one.
    """
    images, labels = _check_data(images, labels)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    run_dir = _resolve_run_dir(cfg, run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(images, labels)
    train_idx, val_idx = split_for(cfg, labels.numpy())
    if len(train_idx) == 0:
        raise ConfigError("no training rows left after the validation split")

    # The data goes to the device once, as uint8 (42k digits are 33 MB).
    x_train, y_train = images[train_idx].to(device), labels[train_idx].to(device)
    x_val, y_val = images[val_idx].to(device), labels[val_idx].to(device)
    channels_last = torch.channels_last  # faster convolutions on CUDA and on CPU (oneDNN)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = build_model(cfg.model).to(device, memory_format=channels_last)
    ema = copy.deepcopy(model).eval() if cfg.ema else None
    optimizer = _optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    policy = cfg.policy
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    forward = torch.compile(model) if cfg.compile else model

    n_train, bs = len(x_train), min(cfg.batch_size, len(x_train))
    steps_per_epoch = n_train // bs  # the last partial batch is dropped (BatchNorm, even steps)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    start_epoch, step, rows, best_acc = 0, 0, [], -math.inf

    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        stored = state["config"]
        changed = sorted(
            k
            for k in cfg.to_dict()
            if k not in RESUME_MAY_CHANGE and stored.get(k) != getattr(cfg, k)
        )
        if changed:
            raise CheckpointError(
                f"{last_path}: config differs from the checkpoint's in {changed}"
            )
        if state["data_fingerprint"] != fingerprint:
            raise CheckpointError(f"{last_path}: checkpoint was trained on different data")
        _load_weights(model, state["model"], last_path)
        if ema is not None:
            _load_weights(ema, state["ema"], last_path)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], gen)
        start_epoch, step = state["epoch"], state["step"]
        rows, best_acc = state["history"], state["best_val_acc"]
    atomic.write_json(cfg.to_dict(), run_dir / "config.json")

    provenance = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "config": cfg.to_dict(),
        "data_fingerprint": fingerprint,
    }
    started = time.perf_counter()
    epochs_bar = tqdm(
        range(start_epoch, cfg.epochs), desc=run_dir.name, disable=quiet, unit="epoch",
        initial=start_epoch, total=cfg.epochs,
    )  # fmt: skip
    for epoch in epochs_bar:
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n_train, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        batches = tqdm(
            range(steps_per_epoch), leave=False, disable=quiet, desc=f"epoch {epoch + 1}"
        )
        for i in batches:
            idx = perm[i * bs : (i + 1) * bs]
            xb = x_train[idx].float().div_(255)  # (B,1,28,28) on [0,1]
            xb = normalize(augment_batch(xb, policy, gen)).contiguous(memory_format=channels_last)
            yb = y_train[idx]
            lr = learning_rate(step, total_steps, cfg.lr, warmup, cfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = forward(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if ema is not None:
                # short runs: ramp the decay so the average is not dominated by the init
                _ema_update(ema, model, min(cfg.ema, (1 + step) / (10 + step)))
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == yb).sum()
            if not quiet and i % 20 == 0:  # .item() syncs the GPU, so not every step
                acc = float(correct) / ((i + 1) * bs)
                batches.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}", lr=f"{lr:.3g}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        eval_model = ema if ema is not None else model
        t1 = time.perf_counter()
        val_loss, val_acc = _evaluate(eval_model, x_val, y_val)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(loss_sum) / steps_per_epoch,
            "train_acc": float(correct) / (steps_per_epoch * bs),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": seconds,
            "images_per_s": steps_per_epoch * bs / seconds,
            "eval_seconds": time.perf_counter() - t1,
        }
        rows.append(row)
        epochs_bar.set_postfix(train_loss=f"{row['train_loss']:.4f}", val_acc=f"{val_acc:.4f}")
        # with no validation rows the best model is simply the last one
        if len(x_val) == 0 or val_acc > best_acc:
            best_acc = val_acc if len(x_val) else best_acc
            best = {**provenance, "kind": "best", "epoch": epoch + 1, "val_acc": val_acc}
            save_checkpoint({**best, "model": eval_model.state_dict()}, best_path)
        save_checkpoint(
            {
                **provenance,
                "kind": "last",
                "epoch": epoch + 1,
                "step": step,
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(gen),
                "history": rows,
                "best_val_acc": best_acc,
            },
            last_path,
        )
        atomic.write_csv(pd.DataFrame(rows), run_dir / "history.csv")

    return _finish(cfg, run_dir, rows, x_val, y_val, val_idx, device, precision, fingerprint,
                   time.perf_counter() - started, n_train)  # fmt: skip


def _finish(
    cfg, run_dir, rows, x_val, y_val, val_idx, device, precision, fingerprint, wall, n_train
):
    """Reload the final weights, save val probabilities, metrics and the runs.csv row."""
    # The run's model is the final one, not the best epoch: picking an epoch by its accuracy on
    # the validation rows would make those rows' probabilities (the out-of-fold predictions the
    # ensemble is chosen on) look better than they are. best.pt stays for inspection.
    final_model, _ = load_run(run_dir, "last", device=device)
    final_model.to(memory_format=torch.channels_last)
    val_proba = predict_proba(final_model, x_val, tta=cfg.tta)
    atomic.atomic_write(
        run_dir / "val_indices.npy", lambda fh: np.save(fh, val_idx.astype(np.int64)), mode="wb"
    )
    atomic.atomic_write(
        run_dir / "val_proba.npy", lambda fh: np.save(fh, val_proba.astype(np.float32)), mode="wb"
    )
    history = pd.DataFrame(rows)
    best_row = history.loc[history["val_acc"].idxmax()] if len(val_idx) else history.iloc[-1]
    y = y_val.cpu().numpy()
    metrics = {
        "name": run_dir.name,
        "model": cfg.model,
        "best_val_acc": float(best_row["val_acc"]),
        "best_epoch": int(best_row["epoch"]),
        "final_val_acc": float(history["val_acc"].iloc[-1]),
        "val_acc_tta": float((val_proba.argmax(1) == y).mean()) if len(y) else float("nan"),
        "train_seconds": float(history["seconds"].sum()),
        "wall_seconds_this_call": wall,
        "params": count_parameters(final_model),
        "device": str(device),
        "precision": precision,
        "epochs": cfg.epochs,
        "n_train": n_train,
        "n_val": len(val_idx),
        "data_fingerprint": fingerprint,
        "version": __version__,
        "finished": datetime.now().isoformat(timespec="seconds"),
    }
    atomic.write_json(metrics, run_dir / "metrics.json")
    _append_runs_table(
        {**{k: metrics[k] for k in ("name", "model", "best_val_acc", "final_val_acc")},
         "seed": cfg.seed, "fold": cfg.fold, "epochs": cfg.epochs,
         "train_seconds": metrics["train_seconds"], "device": metrics["device"],
         "run_dir": str(run_dir), "finished": metrics["finished"]},
        run_dir.parent / "runs.csv",
    )  # fmt: skip
    return TrainResult(final_model, history, metrics, run_dir, val_idx, val_proba, cfg)
