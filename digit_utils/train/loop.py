"""Training: a plain loop on device-resident data, in four steps (set-up, one epoch, evaluate,
finish). The run folder's files are written through :mod:`runs`.

The loop keeps the uint8 images on the device, takes batches as slices of a per-epoch
permutation, and normalises and augments there. The learning rate is a pure function of the step,
so the "scheduler state" in a checkpoint is just the step. Every random draw of the loop comes from
RNGs whose states are saved at the end of each epoch, so a resumed run repeats the interrupted
epoch exactly and ends with bit-identical weights on CPU.

(Over 300 lines: the loop's steps and the state they share read best in one place; the
per-batch forward, loss and EMA live in :mod:`steps`.)
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from digit_utils import __version__
from digit_utils.augment_policy import AugmentPolicy
from digit_utils.config import DEFAULTS, RESUME_MAY_CHANGE, TrainConfig
from digit_utils.data.arrays import data_fingerprint
from digit_utils.errors import CheckpointError, ConfigError, DataError
from digit_utils.splits import split_for
from digit_utils.train import checkpoints, runs, tracking
from digit_utils.train.augment import augment_batch
from digit_utils.train.devices import amp_dtype, resolve_device, resolve_precision, synchronize
from digit_utils.train.inference import as_image_tensor, predict_proba
from digit_utils.train.models import build_model, count_parameters, normalize
from digit_utils.train.progress import bar
from digit_utils.train.steps import Ema, StepFn, training_step

# --------------------------------------------------------------------------------------------
# Schedule


def learning_rate(step: int, total: int, peak: float, warmup: int, schedule: str) -> float:
    """LR at a 0-based step: linear warm-up, then linear (onecycle) or cosine decay to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "onecycle":
        return peak * (1 - progress)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_steps(cfg: TrainConfig, n_train: int) -> tuple[int, int, int]:
    """``(batch size, steps per epoch, warm-up steps)`` of a run on ``n_train`` rows."""
    bs = min(cfg.batch_size, n_train)
    steps_per_epoch = n_train // bs  # the last partial batch is dropped (BatchNorm, even steps)
    return bs, steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)


def lr_by_step(cfg: TrainConfig, n_train: int) -> np.ndarray:
    """The learning rate at every step of a run on ``n_train`` rows (what the loop will use)."""
    bs, per_epoch, warmup = schedule_steps(cfg, n_train)
    total, peak = cfg.epochs * per_epoch, cfg.peak_lr(bs)
    return np.array([learning_rate(s, total, peak, warmup, cfg.schedule) for s in range(total)])


# --------------------------------------------------------------------------------------------
# Set-up


@dataclass
class TrainResult:
    model: nn.Module  # the final weights (EMA ones when EMA is on), eval mode
    history: pd.DataFrame  # one row per epoch
    metrics: dict
    run_dir: Path
    val_idx: np.ndarray  # int64 indices into the full train set
    val_proba: np.ndarray  # float32 [n_val, 10], final model, config's TTA
    config: TrainConfig


@dataclass
class _Run:
    """Everything the loop works on; built by :func:`_set_up`."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    precision: str
    fingerprint: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    val_idx: np.ndarray
    model: nn.Module
    ema: Ema | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator
    forward: nn.Module  # the model, or its compiled wrapper (compile='forward')
    forward_loss: StepFn  # eager, or compiled once per process (compile='step'/'graphs')
    policy: AugmentPolicy
    batch_size: int
    steps_per_epoch: int
    warmup: int
    n_extra: int = 0  # training rows from outside ``images`` (they never validate)
    epoch: int = 0
    step: int = 0
    best_acc: float = -math.inf
    rows: list[dict] = field(default_factory=list)
    val_proba: np.ndarray | None = None  # the last evaluation's, reused when no TTA is asked

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model


def _check_data(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_image_tensor(images)
    y = torch.as_tensor(labels)
    if y.dtype != torch.int64 or y.shape != (len(x),):
        raise DataError(f"labels must be int64 [{len(x)}], got {y.dtype} {tuple(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"labels must be digits 0–9, found {int(y.min())}…{int(y.max())}")
    return x, y


def _optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # the initial lr is a placeholder: every step sets the scheduled one
    # Decay only weight matrices/kernels: decaying BatchNorm scales and biases just hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0},
    ]
    # Fused kernels on CUDA: one launch per step, and under fp16 the GradScaler's inf check
    # stays on the GPU (a non-fused step reads found_inf on the host, a sync every step).
    fused = True if device.type == "cuda" else None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=fused)


def _set_up(cfg: TrainConfig, images, labels, run_dir, resume: bool, extra=None) -> _Run:
    """Split, move the data to the device once, build model, optimizer and RNGs.

    ``extra`` (images, labels) rows join the training rows only, after the split: they never
    validate, so the validation rows stay rows of ``images`` (e.g. pseudo-labelled test rows).
    """
    images, labels = _check_data(images, labels)
    fingerprint_of = (images, labels)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    run_dir = Path(run_dir) if run_dir is not None else runs.default_run_dir(cfg, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_idx, val_idx = split_for(cfg, labels.numpy())
    x_train, y_train = images[train_idx], labels[train_idx]
    if extra is not None:
        x_extra, y_extra = _check_data(*extra)
        x_train, y_train = torch.cat([x_train, x_extra]), torch.cat([y_train, y_extra])
        # another training set, another fingerprint (a resume with other extra rows is refused)
        fingerprint_of = (torch.cat([images, x_extra]), torch.cat([labels, y_extra]))
    if len(train_idx) == 0:
        raise ConfigError("no training rows left after the validation split")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    # channels_last: faster convolutions on CUDA and on CPU (oneDNN)
    model = build_model(cfg.model).to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # extra rows (pseudo-labels) train too: the schedule counts every training row
    bs, steps_per_epoch, warmup = schedule_steps(cfg, len(x_train))
    forward, forward_loss = training_step(model, cfg.compile, device, precision)
    return _Run(
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        precision=precision,
        fingerprint=data_fingerprint(*fingerprint_of),
        # the data goes to the device once, as uint8 (42k digits are 33 MB)
        x_train=x_train.to(device),
        y_train=y_train.to(device),
        x_val=images[val_idx].to(device),
        y_val=labels[val_idx].to(device),
        val_idx=val_idx,
        model=model,
        ema=Ema(model) if cfg.ema else None,
        optimizer=_optimizer(cfg, model, device),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        gen=torch.Generator(device=device).manual_seed(cfg.seed),
        forward=forward,
        forward_loss=forward_loss,
        policy=cfg.policy,
        batch_size=bs,
        steps_per_epoch=steps_per_epoch,
        warmup=warmup,
        n_extra=len(x_train) - len(train_idx),
    )


def _resume(run: _Run) -> None:
    """Continue from ``last.pt`` when the run has one (same config and data)."""
    last_path = runs.resume_path(run.run_dir)
    if not last_path.is_file():
        return
    state = checkpoints.load_checkpoint(last_path)
    stored, cfg = state["config"], run.cfg
    changed = sorted(
        k
        for k in cfg.to_dict()
        if k not in RESUME_MAY_CHANGE and stored.get(k, DEFAULTS[k]) != getattr(cfg, k)
    )  # a setting newer than the checkpoint compares as its default
    if changed:
        raise CheckpointError(f"{last_path}: config differs from the checkpoint's in {changed}")
    if state["data_fingerprint"] != run.fingerprint:
        raise CheckpointError(f"{last_path}: checkpoint was trained on different data")
    checkpoints.load_weights(run.model, state["model"], last_path)
    if run.ema is not None:
        checkpoints.load_weights(run.ema.model, state["ema"], last_path)
    _load_optimizer(run.optimizer, state["optimizer"])
    if state["scaler"]:  # a disabled scaler (fp32, bf16) saved {}: an fp16 one starts afresh
        run.scaler.load_state_dict(state["scaler"])
    if not checkpoints.set_rng_state(state["rng"], run.gen, seed=cfg.seed, epoch=state["epoch"]):
        warnings.warn(
            f"{last_path}: saved on another kind of machine ({state['rng'].get('device_type')}, "
            f"{len(state['rng']['cuda'])} GPU RNG state(s)); the random streams are reseeded "
            f"from (seed, epoch), so this resume is not bit-identical",
            stacklevel=3,
        )
    run.epoch, run.step = state["epoch"], state["step"]
    run.rows, run.best_acc = state["history"], state["best_val_acc"]


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load an optimizer's state saved on any machine: this machine's kernel choice (fused on
    CUDA, not on the CPU) stays, and a fused optimizer gets its step counters on its device."""
    flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, kept in zip(optimizer.param_groups, flags, strict=True):
        group.update(kept)
        if group.get("fused"):
            for p in group["params"]:
                if "step" in optimizer.state.get(p, {}):
                    optimizer.state[p]["step"] = optimizer.state[p]["step"].to(p.device)


# --------------------------------------------------------------------------------------------
# One epoch, evaluation, checkpoints


def _one_epoch(run: _Run, quiet: bool) -> dict:
    """One pass over the training rows; returns the epoch's training figures."""
    cfg, device, bs = run.cfg, run.device, run.batch_size
    run.model.train()
    t0 = time.perf_counter()
    perm = torch.randperm(len(run.x_train), generator=run.gen, device=device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    dtype = amp_dtype(run.precision)
    # progress-bar figures read the GPU (a sync), so only a few times per epoch
    report_every = max(1, run.steps_per_epoch // 4)
    total_steps = cfg.epochs * run.steps_per_epoch
    batches = bar(
        range(run.steps_per_epoch), inner=True, leave=False, disable=quiet,
        desc=f"epoch {run.epoch + 1}",
    )  # fmt: skip
    lr = peak = cfg.peak_lr(bs)  # cfg.lr unless lr_scaling scales it to this batch size
    for i in batches:
        idx = perm[i * bs : (i + 1) * bs]
        xb = run.x_train[idx].float().div_(255)  # (B,1,28,28) on [0,1]
        xb = normalize(augment_batch(xb, run.policy, run.gen))
        xb = xb.contiguous(memory_format=torch.channels_last)
        yb = run.y_train[idx]
        lr = learning_rate(run.step, total_steps, peak, run.warmup, cfg.schedule)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        loss, logits = run.forward_loss(run.forward, xb, yb, cfg.label_smoothing, dtype)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.step += 1
        if run.ema is not None:
            # short runs: ramp the decay so the average is not dominated by the init
            run.ema.update(min(cfg.ema, (1 + run.step) / (10 + run.step)))
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(1) == yb).sum()
        if not batches.disable and i % report_every == 0:  # no bar (notebooks): no sync
            acc = float(correct) / ((i + 1) * bs)
            batches.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}", lr=f"{lr:.3g}")
    synchronize(device)  # the run's own device, which need not be the current one
    seconds = time.perf_counter() - t0
    return {
        "epoch": run.epoch + 1,
        "train_loss": float(loss_sum) / run.steps_per_epoch,
        "train_acc": float(correct) / (run.steps_per_epoch * bs),
        "lr": lr,
        "seconds": seconds,
        "images_per_s": run.steps_per_epoch * bs / seconds,
    }


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str
) -> tuple[float, float, np.ndarray | None]:
    """(val loss, val accuracy, probabilities) with plain cross-entropy, in the run's precision;
    NaN and None when there are no rows."""
    if len(x) == 0:
        return float("nan"), float("nan"), None
    proba = predict_proba(model, x, precision=precision)
    p, y = torch.from_numpy(proba), y.cpu()
    loss = -p[torch.arange(len(y)), y].clamp_min(1e-12).log().mean()
    return float(loss), float((p.argmax(1) == y).float().mean()), proba


def _save_epoch(run: _Run) -> None:
    """best.pt when the epoch improved, last.pt (everything a resume needs) and history.csv."""
    header = checkpoints.checkpoint_header(run.cfg, run.fingerprint)
    row = run.rows[-1]
    # with no validation rows the best model is simply the last one
    if len(run.x_val) == 0 or row["val_acc"] > run.best_acc:
        run.best_acc = row["val_acc"] if len(run.x_val) else run.best_acc
        best = {**header, "kind": "best", "epoch": row["epoch"], "val_acc": row["val_acc"]}
        checkpoints.save_checkpoint(
            {**best, "model": run.eval_model.state_dict()}, runs.best_path(run.run_dir)
        )
    last = {
        **header,
        "kind": "last",
        "epoch": row["epoch"],
        "step": run.step,
        "model": run.model.state_dict(),
        "ema": run.ema.model.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": checkpoints.rng_state(run.gen),
        "history": run.rows,
        "best_val_acc": run.best_acc,
    }
    resumable = runs.resume_path(run.run_dir)
    resumable.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save_checkpoint(last, resumable)
    runs.write_history(run.run_dir, run.rows)


def _save_final(run: _Run) -> None:
    """Inside a Kaggle kernel (the resumable last.pt in scratch space): the run folder's last.pt
    with the final weights only (the EMA's when there is one; fp16), which every reader loads."""
    if runs.resume_path(run.run_dir) == run.run_dir / runs.LAST:
        return
    final = {
        **checkpoints.checkpoint_header(run.cfg, run.fingerprint),
        "kind": "last",
        "epoch": run.rows[-1]["epoch"] if run.rows else run.epoch,
        "step": run.step,
        "model": checkpoints.half_weights(run.eval_model.state_dict()),
        "ema": None,
        "history": run.rows,
        "best_val_acc": run.best_acc,
    }
    checkpoints.save_checkpoint(final, run.run_dir / runs.LAST)
    run.val_proba = None  # the saved probabilities are then the fp16 weights' own (_finish)


# --------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: TrainConfig,
    images,
    labels,
    *,
    run_dir=None,
    resume: bool = False,
    quiet: bool = False,
    extra_images=None,
    extra_labels=None,
) -> TrainResult:
    """Train ``cfg.model`` on the full train set (the config picks the validation rows).

    ``images`` uint8 [N,1,28,28] and ``labels`` int64 [N]. ``extra_images``/``extra_labels``
    are added to the training rows only (never validated; ``val_idx`` still indexes ``images``).
    Writes the run folder (default
    ``outputs/runs/<name>``; layout in :mod:`runs`), marks it complete, then adds its row to
    ``runs.csv`` beside it. ``resume=True`` continues from ``last.pt`` when there is
    one; otherwise an earlier run in the same folder is cleared before the first checkpoint.
    """
    if (extra_images is None) != (extra_labels is None):
        raise ConfigError("extra_images and extra_labels go together")
    extra = None if extra_images is None else (extra_images, extra_labels)
    run = _set_up(cfg, images, labels, run_dir, resume, extra)
    runs.start_fresh(run.run_dir, keep_checkpoints=resume)
    if resume:
        _resume(run)
    runs.write_config(run.run_dir, cfg)
    facts = {"device": run.device, "precision": run.precision, "data_fingerprint": run.fingerprint}
    tracker = tracking.start_run(
        cfg, run.run_dir, facts=facts, sample=run.x_train[:6], epoch=run.epoch
    )  # MLflow/TensorBoard when cfg.tracking asks; logs at epoch ends only
    started = time.perf_counter()
    epochs_bar = bar(
        range(run.epoch, cfg.epochs), desc=run.run_dir.name, disable=quiet, unit="epoch",
        initial=run.epoch, total=cfg.epochs,
    )  # fmt: skip
    for epoch in epochs_bar:
        run.epoch = epoch
        row = _one_epoch(run, quiet)
        t1 = time.perf_counter()
        row["val_loss"], row["val_acc"], run.val_proba = _evaluate(
            run.eval_model, run.x_val, run.y_val, run.precision
        )
        row["eval_seconds"] = time.perf_counter() - t1
        run.rows.append({k: row[k] for k in runs.HISTORY_COLUMNS})
        scores = {"train_loss": f"{row['train_loss']:.4f}"}
        if len(run.x_val):  # a refit on every row has no validation accuracy to show
            scores["val_acc"] = f"{row['val_acc']:.4f}"
        epochs_bar.set_postfix(scores)
        _save_epoch(run)
        tracker.epoch(run.rows[-1])
    _save_final(run)
    result = _finish(run, time.perf_counter() - started)
    tracker.finish(result.metrics)
    return result


def _finish(run: _Run, wall: float) -> TrainResult:
    """Reload the final weights, save val probabilities, metrics and the runs.csv row."""
    cfg = run.cfg
    # The run's model is the final one, not the best epoch: picking an epoch by its accuracy on
    # the validation rows would make those rows' probabilities (the out-of-fold predictions the
    # ensemble is chosen on) look better than they are. best.pt stays for inspection.
    final_model, _ = checkpoints.load_run(
        run.run_dir, "last", device=run.device, require_complete=False
    )
    final_model.to(memory_format=torch.channels_last)
    val_proba = (
        run.val_proba  # the last epoch scored this very model on these rows
        if cfg.tta == 0 and run.val_proba is not None
        else predict_proba(final_model, run.x_val, tta=cfg.tta, precision=run.precision)
    )
    runs.write_validation(run.run_dir, run.val_idx, val_proba)
    history = pd.DataFrame(run.rows)
    has_val = len(run.val_idx) > 0
    best_row = history.loc[history["val_acc"].idxmax()] if has_val else history.iloc[-1]
    y = run.y_val.cpu().numpy()
    metrics = {
        "name": run.run_dir.name,
        "model": cfg.model,
        "best_val_acc": float(best_row["val_acc"]),
        "best_epoch": int(best_row["epoch"]),
        "final_val_acc": float(history["val_acc"].iloc[-1]),
        "val_acc_tta": float((val_proba.argmax(1) == y).mean()) if has_val else float("nan"),
        "train_seconds": float(history["seconds"].sum()),
        "wall_seconds_this_call": wall,
        "params": count_parameters(final_model),
        "device": str(run.device),
        "precision": run.precision,
        "epochs": cfg.epochs,
        "n_train": len(run.x_train),
        "n_extra": run.n_extra,
        "n_val": len(run.val_idx),
        "data_fingerprint": run.fingerprint,
        "version": __version__,
        "finished": datetime.now().isoformat(timespec="seconds"),
    }
    runs.write_metrics(run.run_dir, metrics)
    runs.mark_complete(run.run_dir)  # from here on the folder is a finished run
    runs.record_in_table(run.run_dir, metrics, cfg)  # bookkeeping, after: it cannot lose the run
    return TrainResult(final_model, history, metrics, run.run_dir, run.val_idx, val_proba, cfg)
