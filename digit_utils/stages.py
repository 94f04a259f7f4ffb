"""The stage graph: each numbered notebook's parameters, what it reads and writes, whether it
wants a GPU. The pipeline, the Kaggle kernels and the notebooks' own set-up all read it here.

A notebook's parameters are the TrainConfig fields it shows (their types come from the config)
plus a few of its own. Hand-off files (one stage writes, a later one reads) are declared as
``reads``; the upstream stages of a notebook (its Kaggle ``kernel_sources``) follow from them.
The writer and reader of each hand-off file sit together: the augmentation policy and the
architecture choice here, run lists in :mod:`digit_utils.train.runs`, and the ensemble's
members (04's runs and the zoo's ties) in :mod:`digit_utils.train.members`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digit_utils import atomic, paths, typed
from digit_utils.augment_policy import PRESETS, AugmentPolicy, tta_shifts
from digit_utils.config import DEVICE_NAME, FIELDS, TrainConfig
from digit_utils.errors import ConfigError, DigitsError

DATA_DIR = "data_dir"  # the parameter every data-reading notebook has; the pipeline fills it
POLICY = "02_augmentation/policy.json"  # 02's chosen augmentation, read by 03 and 04
MODEL_CHOICE = "03_model_zoo/choice.json"  # the zoo's chosen architecture, read by 04
ZOO_RUNS = f"03_model_zoo/{paths.RUN_LIST}"  # the zoo's runs: members in 05 when folds match
TRAINED_RUNS = f"04_train_cnn/{paths.RUN_LIST}"  # 04's runs, the ensemble's members in 05
REFIT_RUNS = "04_train_cnn/refit_runs.json"  # 04's refits on every row, compared in 05


@dataclass(frozen=True)
class StageSpec:
    """One notebook of the pipeline."""

    name: str  # the notebook's stem, NN_name
    gpu: bool  # its Kaggle kernel asks for a GPU
    train_fields: tuple[str, ...] = ()  # TrainConfig fields its parameters cell shows
    extras: Mapping[str, Any] = field(default_factory=dict)  # its own parameters and types
    reads: tuple[str, ...] = ()  # hand-off files of earlier stages (paths under outputs/)
    writes: tuple[str, ...] = ()  # its own hand-off files, under outputs/<name>/
    optional: tuple[str, ...] = ()  # those of ``writes`` it may leave out (a setting turns off)
    delivers: tuple[str, ...] = ()  # files for the user, relative to the kernel's working folder

    @property
    def upstream(self) -> tuple[str, ...]:
        """The stages whose outputs this one reads, in pipeline order."""
        return tuple(dict.fromkeys(r.split("/", 1)[0] for r in self.reads))

    @property
    def promised(self) -> tuple[str, ...]:
        """The files its run always leaves, relative to the working folder (a kernel's output)."""
        own = [f"outputs/{self.name}/{w}" for w in self.writes if w not in self.optional]
        return (*self.delivers, *own)

    @property
    def schema(self) -> dict[str, Any]:
        """``{parameter: type}`` of the notebook's parameters cell."""
        return {DATA_DIR: str, **{f: FIELDS[f] for f in self.train_fields}, **self.extras}


_TRACKING = ("tracking", "tracking_artifacts")  # MLflow/TensorBoard (tracking.py); off by default
_TRAINING = ("epochs", "batch_size", "lr", "val_fraction", "device", "precision", *_TRACKING)
# 04_train_cnn's recipe, which 02 compares augmentation with (a profile sets it once, for both)
_RECIPE = ("optimizer", "schedule", "weight_decay", "label_smoothing", "ema", "tta")
STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("01_eda", gpu=False, extras={"tsne_samples": int, "seed": int}),
        StageSpec(
            "02_augmentation",
            gpu=True,
            train_fields=("model", *_TRAINING, *_RECIPE),
            # n_folds: k-fold so every labelled row scores every policy; 0 for one holdout
            # rows: a stratified sample of the labelled rows when every row costs too much
            extras={"policies": str, "n_folds": int, "seeds": int, "rows": int},
            writes=(Path(POLICY).name,),
        ),
        StageSpec(
            "03_model_zoo",
            gpu=True,
            # 04_train_cnn's recipe (its last rung trains at 04's budget on 04's folds)
            train_fields=(
                "augment",
                "optimizer",
                "schedule",
                "weight_decay",
                "label_smoothing",
                "ema",
                *_TRAINING,
            ),  # fmt: skip
            # successive halving: min_epochs at rung 0, eta the promotion factor; max_gpu_hours
            # caps the screening in T4 GPU-hours by gpu_cost's table
            extras={
                "models": str,
                "n_folds": int,
                "seed": int,
                "min_epochs": int,
                "eta": int,
                "max_gpu_hours": float,
                "rows": int,  # a stratified sample of the labelled rows (0: all)
            },  # fmt: skip
            reads=(POLICY,),
            writes=("leaderboard.json", Path(MODEL_CHOICE).name, paths.RUN_LIST),
        ),
        StageSpec(
            "04_train_cnn",
            gpu=True,
            train_fields=(
                "model",
                "epochs",
                "batch_size",
                "optimizer",
                "lr",
                "schedule",
                "weight_decay",
                "label_smoothing",
                "ema",
                "augment",
                "val_fraction",
                "tta",
                "device",
                "precision",
                "compile",
                *_TRACKING,
            ),  # fmt: skip
            # n_folds here is the grid's: 0 means one holdout shared by all seeds
            # refit: also retrain the recipe on every labelled row, one model per seed
            extras={"n_folds": int, "seeds": int, "refit": bool},
            reads=(POLICY, MODEL_CHOICE),
            writes=(paths.RUN_LIST, Path(REFIT_RUNS).name),
            optional=(Path(REFIT_RUNS).name,),  # refit=False removes it
        ),
        StageSpec(
            "05_ensemble_submission",
            gpu=True,  # inference with TTA over several models is faster on a GPU as well
            train_fields=("tracking",),  # its MLflow run logs the submission; no training here
            extras={
                "runs": str,
                "pseudo_threshold": float,
                "max_gpu_hours": float,  # T4 GPU-hours its second round may train (gpu_cost)
                "tta": int,
                "cv_folds": int,
                "device": str,
                "submit": bool,
                "message": str,
            },  # fmt: skip
            reads=(ZOO_RUNS, TRAINED_RUNS, REFIT_RUNS),  # 03's and the refits when present
            writes=(paths.RUN_LIST,),  # the submitted models, for `digits serve` and `predict`
            delivers=("submission.csv",),  # /kaggle/working/submission.csv, what Kaggle submits
        ),
    )
}


def spec(name: str) -> StageSpec:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; the stages are: {', '.join(STAGES)}")
    return STAGES[name]


def match(stems: Sequence[str], selector: str, what: str = "notebook") -> str:
    """The stem a selector (``04`` or ``04_train_cnn``) names; ConfigError when none or several.

    The one notebook selector: the pipeline, the kernel commands and the CLI all use it.
    """
    selector = Path(selector.strip()).stem
    hits = [s for s in stems if s == selector or s.split("_", 1)[0] == selector]
    if len(hits) != 1:
        problem = "matches several notebooks" if hits else "names no notebook"
        known = ", ".join(stems) or "none"
        raise ConfigError(f"{what} {selector!r} {problem}; the notebooks are: {known}")
    return hits[0]


def _policies(text: str) -> bool:
    """02's comma-separated preset names (what its notebook trains, one grid variant each)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"policies: {text!r} names no augmentation preset")
    for policy in names:
        if policy not in PRESETS:
            known = ", ".join(PRESETS)
            raise ConfigError(f"policies: {policy!r} is not an augmentation preset ({known})")
    return True


# The value rules of the stages' own parameters (the TrainConfig fields' are the config's):
# {parameter: (test that raises or returns False, what a good value is)}. A name means the same
# in every stage that has it.
EXTRA_RULES: dict[str, tuple[Any, str]] = {
    "tsne_samples": (lambda v: v >= 3, "must be at least 3 (t-SNE needs a few points)"),
    "seed": (lambda v: v >= 0, "must be ≥ 0"),
    "seeds": (lambda v: v >= 1, "must be at least 1"),
    "n_folds": (lambda v: v == 0 or v >= 2, "must be 0 (one holdout) or a k of 2 or more"),
    "cv_folds": (lambda v: v >= 2, "must be at least 2"),
    "min_epochs": (lambda v: v >= 1, "must be at least 1"),
    "eta": (lambda v: v >= 2, "must be at least 2 (the factor between rungs)"),
    "rows": (lambda v: v >= 0, "must be 0 (every row) or the number of rows to sample"),
    "max_gpu_hours": (lambda v: v > 0, "must be above 0 (T4 GPU-hours)"),
    "pseudo_threshold": (lambda v: 0 <= v <= 1, "must be in [0, 1] (0: no second round)"),
    "tta": (tta_shifts, ""),  # the one TTA check; its message says the range
    "device": (DEVICE_NAME.match, "is not a device name ('auto', 'cpu', 'cuda', 'cuda:0', 'mps')"),
    "policies": (_policies, ""),
}


def check_values(name: str, values: Mapping[str, Any]) -> dict:
    """Check some of a stage's parameters as its notebook will: names, types and values (the
    training fields through TrainConfig's own checks; the model's name is the registry's, one
    layer up). The pipeline calls this before the first notebook starts; ``nb.start`` too."""
    stage = spec(name)
    schema = stage.schema
    if unknown := sorted(set(values) - set(schema)):
        raise ConfigError(f"{name}: unknown parameter(s) {unknown}; known: {sorted(schema)}")
    checked = typed.check(values, {k: schema[k] for k in values}, where=f"{name}: ", quote=True)
    for key, value in checked.items():
        if key in stage.extras and key in EXTRA_RULES:
            test, want = EXTRA_RULES[key]
            try:
                ok = test(value)
            except ConfigError as e:  # the rule's own message, which names the parameter
                raise ConfigError(f"{name}: {e}") from None
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"{name}: {key}: {typed.shown(value)} {want}")
    training = {k: v for k, v in checked.items() if k in stage.train_fields}
    for key, upstream in (("augment", POLICY), ("model", MODEL_CHOICE)):
        if training.get(key) == "auto" and upstream in stage.reads:
            del training[key]  # "auto": the earlier stage's choice, resolved when the stage runs
    try:
        TrainConfig.from_dict(training)
    except ConfigError as e:
        raise ConfigError(f"{name}: {str(e).removeprefix('training parameters: ')}") from None
    return checked


# --------------------------------------------------------------------------------------------
# The augmentation policy: 02 writes it, 03 and 04 read it


def upstream_json(relative: str) -> dict | None:
    """An earlier stage's hand-off file (e.g. POLICY), or None when that stage has not run here.

    Inside a Kaggle kernel a declared upstream that is missing is a broken chain, not a reason for
    a default: DigitsError names the upstream kernel and its expected mount.
    """
    try:
        return json.loads(paths.upstream(relative).read_text())
    except DigitsError:
        if paths.in_kaggle_kernel():
            raise
        return None


def save_policy(folder: Path, policy: str, **facts) -> dict:
    """Record the policy 02_augmentation chose (with the figures that chose it)."""
    choice = {"policy": policy, "augment": AugmentPolicy.parse(policy).to_dict(), **facts}
    atomic.write_json(choice, Path(folder) / Path(POLICY).name)
    return choice


def chosen_augmentation(augment: str) -> tuple[str | dict, str]:
    """Resolve a training notebook's ``augment`` parameter: ``(spec, where it came from)``.

    "auto" takes the policy that 02_augmentation chose, or the "affine" preset (with a message)
    when that notebook has not run here (inside a Kaggle kernel that is an error); anything else
    is a preset name used as given.
    """
    if augment != "auto":
        return augment, "parameter"
    if (choice := upstream_json(POLICY)) is None:
        return "affine", "default (02_augmentation has not run)"
    return choice["augment"], f"02_augmentation chose {choice['policy']!r}"


# --------------------------------------------------------------------------------------------
# The architecture: 03 writes it, 04 reads it


def save_model_choice(folder: Path, model: str, **facts) -> dict:
    """Record the architecture 03_model_zoo chose (with the figures and the rule that chose it)."""
    choice = {"model": model, **facts}
    atomic.write_json(choice, Path(folder) / Path(MODEL_CHOICE).name)
    return choice


def chosen_model(model: str) -> tuple[str, str]:
    """Resolve a training notebook's ``model`` parameter: ``(name, where it came from)``.

    "auto" takes the architecture 03_model_zoo chose, or ``deep_cnn`` (with a message) when that
    notebook has not run here (inside a Kaggle kernel that is an error); anything else is a
    registered name used as given.
    """
    if model != "auto":
        return model, "parameter"
    if (choice := upstream_json(MODEL_CHOICE)) is None:
        return "deep_cnn", "default (03_model_zoo has not run)"
    return choice["model"], f"03_model_zoo chose {choice['model']!r}"
