"""TrainConfig: the one declaration of every training setting.

A notebook's parameters cell shows the fields it uses as literals, the pipeline's profiles set
them by name, and the config travels into every checkpoint and run folder. Adding a
hyperparameter means a field here, its use in the loop, and (if a notebook exposes it) a line in
that notebook's parameters cell plus its name in ``stages.py``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from digit_utils import typed
from digit_utils.augment_policy import AugmentPolicy, tta_shifts
from digit_utils.errors import ConfigError

DEFAULT_EMA_DECAY = 0.999
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
TRACKERS = ("mlflow", "tensorboard")  # experiment trackers `tracking` may name (see tracking.py)
TRACKING_ARTIFACTS = ("small", "all")  # small: config, history, metrics; all: + checkpoints
# off; forward: torch.compile the model; step: forward, loss and backward as one compiled graph;
# graphs: step replayed as CUDA graphs (CUDA only). Unmeasured on a GPU so far (docs/kaggle.md).
COMPILE_MODES = ("off", "forward", "step", "graphs")
LR_SCALINGS = ("none", "linear", "sqrt")  # lr × (batch/128)^{0, 1, 1/2}
LR_REFERENCE_BATCH = 128  # the batch size every recipe's lr was tuned at
# Config fields that may differ between a run and its resumption without changing the maths.
RESUME_MAY_CHANGE = {"name", "device", "compile", "tracking", "tracking_artifacts"}


def parse_trackers(tracking: str) -> tuple[str, ...]:
    """The experiment trackers a ``tracking`` value names ("none" names none)."""
    names = [t.strip().lower() for t in tracking.split(",") if t.strip()]
    if names == ["none"] or not names:
        return ()
    if unknown := [t for t in names if t not in TRACKERS]:
        raise ConfigError(
            f"tracking: {tracking!r} names unknown tracker(s) {unknown}; use 'none', or one or "
            f"more of {', '.join(TRACKERS)} separated by commas"
        )
    return tuple(dict.fromkeys(names))


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
    precision: str = "auto"  # "auto" (bf16 from sm_80, fp16 below, fp32 on CPU) | fp32/bf16/fp16
    compile: bool | str = "off"  # COMPILE_MODES; True means "forward", False "off"
    lr_scaling: str = "none"  # "none" | "linear" | "sqrt": lr scaled by batch_size / 128
    tta: int = 0  # shifts averaged for the saved validation probabilities (augment_policy.SHIFTS)
    name: str | None = None  # run folder name; default <model>-seed<seed>-<timestamp>
    tracking: str = "none"  # "none" | "mlflow" | "tensorboard" | "mlflow,tensorboard"
    tracking_artifacts: str = "small"  # "small" | "all" (also the checkpoints, which are large)

    def __post_init__(self):
        if isinstance(self.ema, bool):  # ema=True means the default decay
            object.__setattr__(self, "ema", DEFAULT_EMA_DECAY if self.ema else 0.0)
        if isinstance(self.compile, bool):  # the old switch: compile=True was the forward pass
            object.__setattr__(self, "compile", "forward" if self.compile else "off")
        typed.check_dataclass(self)
        self._check_values()

    def _check_values(self) -> None:
        def bad(field, why):
            raise ConfigError(f"{field}: {getattr(self, field)!r} {why}")

        for f in dataclasses.fields(self):  # nan passes `lr > 0` false but `wd < 0` too
            if isinstance(getattr(self, f.name), float) and not math.isfinite(
                getattr(self, f.name)
            ):
                bad(f.name, "must be a finite number")
        # the model's name is checked by the registry (train.models.check_name), above this layer
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
        if self.precision not in PRECISIONS:
            bad("precision", "must be 'auto', 'fp32', 'bf16' or 'fp16'")
        tta_shifts(self.tta)
        if self.compile not in COMPILE_MODES:
            bad("compile", f"must be one of {', '.join(COMPILE_MODES)} (or True/False)")
        if self.lr_scaling not in LR_SCALINGS:
            bad("lr_scaling", f"must be one of {', '.join(LR_SCALINGS)}")
        if not DEVICE_NAME.match(self.device):
            bad("device", "is not a device name ('auto', 'cpu', 'cuda', 'cuda:0', 'mps')")
        if self.name is not None and (not self.name or set(self.name) & set("/\\:")):
            bad("name", "must be a non-empty folder name")
        self.trackers  # noqa: B018  (validates tracking)
        if self.tracking_artifacts not in TRACKING_ARTIFACTS:
            bad("tracking_artifacts", "must be 'small' or 'all'")
        self.policy  # noqa: B018  (validates the augmentation spec)

    def peak_lr(self, batch_size: int) -> float:
        """The peak learning rate at ``batch_size`` (the run's, which a small data set may cap):
        ``lr`` scaled by ``lr_scaling`` relative to LR_REFERENCE_BATCH."""
        power = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[self.lr_scaling]
        return self.lr * (batch_size / LR_REFERENCE_BATCH) ** power

    @property
    def policy(self) -> AugmentPolicy:
        return AugmentPolicy.parse(self.augment)

    @property
    def trackers(self) -> tuple[str, ...]:
        return parse_trackers(self.tracking)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a flat dict; unknown keys, wrong types and bad values raise ConfigError."""
        return typed.from_dict(cls, d, where="training parameters: ")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed, checked like a new config."""
        if unknown := sorted(set(changes) - set(self.to_dict())):
            raise ConfigError(f"unknown training parameter(s) {unknown}")
        return dataclasses.replace(self, **changes)


FIELDS: dict[str, object] = typed.field_types(TrainConfig)
DEFAULTS: dict[str, object] = TrainConfig().to_dict()
