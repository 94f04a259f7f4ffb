"""Grids of training runs for the notebooks: policies × seeds, models × one budget, seeds × folds.

Each grid trains with :func:`train.train`, over every visible GPU at once when there are several
(:mod:`device_pool`), keeps every run folder, and returns tidy tables (one row per run, one row
per run-epoch) that the plots take directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths
from .config import TrainConfig
from .device_pool import train_all
from .errors import ConfigError
from .predict import inference_ms, predict_proba
from .progress import bar
from .train import TrainResult, train


@dataclass
class Grid:
    """The outcome of a grid: per-run results, per-epoch histories and the runs themselves."""

    results: pd.DataFrame  # per run: variant, seed, fold, val_acc, seconds, params, device, run
    histories: pd.DataFrame  # one row per run and epoch, with variant/seed/fold columns
    runs: list[TrainResult] = field(repr=False, default_factory=list)

    def summary(self, by: str = "variant") -> pd.DataFrame:
        """Mean ± sd of accuracy and time per variant, best first."""
        table = self.results.groupby(by).agg(
            val_acc_mean=("val_acc", "mean"),
            val_acc_std=("val_acc", "std"),
            runs=("val_acc", "size"),
            train_seconds=("train_seconds", "mean"),
            devices=("device", lambda d: ", ".join(sorted(set(d)))),
        )
        return table.fillna({"val_acc_std": 0.0}).sort_values("val_acc_mean", ascending=False)

    def run_groups(self, group_by: str = "variant-seed") -> dict[str, list[str]]:
        """``{base model: [run folders]}``: the folds of one (variant, seed) form one model."""
        groups: dict[str, list[str]] = {}
        for row in self.results.itertuples():
            key = f"{row.variant}-s{row.seed}" if group_by == "variant-seed" else row.variant
            groups.setdefault(key, []).append(row.run)
        return groups


def run_grid(
    images: np.ndarray,
    labels: np.ndarray,
    base: TrainConfig,
    variants: Mapping[str, Mapping],
    *,
    seeds: Sequence[int] = (0,),
    folds: int = 0,
    root: Path | None = None,
    quiet: bool = True,
    workers: int | str = "auto",
    threads: int | None = None,
    extra: Callable[[TrainConfig], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Grid:
    """Train every variant (config changes to ``base``) with every seed, and every fold if asked.

    ``folds`` ≥ 2 trains each (variant, seed) on all k folds of one stratified split, so their
    validation rows cover the whole train set once (out-of-fold). Run folders go under ``root``
    (default ``outputs/runs``) named ``<variant>-s<seed>[-f<fold>]``. ``workers`` "auto" trains
    on every visible GPU at once (one run per GPU at a time; one at a time on the CPU), with the
    results of training them one after another; ``threads`` see :func:`device_pool.train_all`.
    ``extra(config)`` gives a run extra training rows ``(images, labels)`` that never validate
    (see :mod:`pseudo`); such runs train in this process, one after another.
    """
    if not variants or not seeds:
        raise ConfigError("run_grid: need at least one variant and one seed")
    if folds == 1 or folds < 0:
        raise ConfigError(f"folds: use 0 for a holdout or ≥ 2 for k-fold, got {folds}")
    root = Path(root or paths.runs_dir())
    jobs = [
        (variant, seed, fold)
        for variant in variants
        for seed in seeds
        for fold in (range(folds) if folds else [None])
    ]
    configs = []
    for variant, seed, fold in jobs:
        name = f"{variant}-s{seed}" + (f"-f{fold}" if fold is not None else "")
        changes = {**variants[variant], "seed": seed, "name": name}
        if fold is not None:
            changes.update(fold=fold, n_folds=folds)
        configs.append((base.replace(**changes), root / name))
    # quiet: one bar for the grid; otherwise each run draws its own and this one would interleave
    shown = quiet and len(jobs) > 1
    with bar(total=len(jobs), desc="runs", unit="run", disable=not shown) as grid_bar:
        if extra is None:
            runs = train_all(
                configs, images, labels, workers=workers, threads=threads, quiet=quiet,
                done=lambda: grid_bar.update(1),
            )  # fmt: skip
        else:  # runs with their own extra rows (pseudo-labels) train here, one after another
            runs = []
            for cfg, run_dir in configs:
                x_extra, y_extra = extra(cfg)
                runs.append(train(cfg, images, labels, run_dir=run_dir, quiet=quiet,
                                  extra_images=x_extra, extra_labels=y_extra))  # fmt: skip
                grid_bar.update(1)
    rows, histories = [], []
    for (variant, seed, fold), (cfg, _), result in zip(jobs, configs, runs, strict=True):
        m = result.metrics
        rows.append(
            {
                "variant": variant,
                "seed": seed,
                "fold": fold,
                "model": cfg.model,
                "val_acc": m["final_val_acc"],  # the run's model; no epoch picked on these rows
                "best_val_acc": m["best_val_acc"],
                "train_seconds": m["train_seconds"],
                "params": m["params"],
                "device": m["device"],  # the device that trained it
                "run": str(result.run_dir),
            }
        )
        histories.append(result.history.assign(variant=variant, seed=seed, fold=fold))
    return Grid(pd.DataFrame(rows), pd.concat(histories, ignore_index=True), runs)


def leaderboard(grid: Grid, images: np.ndarray, device: str = "auto") -> pd.DataFrame:
    """One row per model of a zoo grid: params, validation accuracy (mean over its folds),
    training time (all its runs) and inference time (its first run's model), best first."""
    rows: dict[str, dict] = {}
    for row, run in zip(grid.results.itertuples(), grid.runs, strict=True):
        if row.model not in rows:
            rows[row.model] = {
                "model": row.model,
                "params": int(row.params),
                "trained_on": row.device,
                "val_acc": [],
                "train_seconds": 0.0,
                "infer_ms_per_1000": inference_ms(run.model, images, device),
            }
        rows[row.model]["val_acc"].append(row.val_acc)
        rows[row.model]["train_seconds"] += row.train_seconds
    board = pd.DataFrame([{**r, "val_acc": float(np.mean(r["val_acc"]))} for r in rows.values()])
    return board.sort_values("val_acc", ascending=False).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Every labelled row: refit on all rows, against the k-fold members


def refit(
    cfg: TrainConfig,
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    *,
    epochs: int | None = None,
    root: Path | None = None,
    tta: int = 0,
    quiet: bool = True,
) -> tuple[TrainResult, np.ndarray]:
    """Retrain a recipe on every labelled row (no validation) and predict the test images.

    ``epochs`` is the number CV chose (default the recipe's). Returns the run and its test
    probabilities ``float32 [N,10]``. The refit has no held-out row: its accuracy can only be
    inferred from the CV of the same recipe.
    """
    name = f"{cfg.name or cfg.model}-refit"
    cfg = cfg.replace(val_fraction=0.0, fold=None, epochs=epochs or cfg.epochs, name=name)
    result = train(cfg, images, labels, run_dir=Path(root or paths.runs_dir()) / name, quiet=quiet)
    return result, predict_proba(result.model, test_images, tta=tta)


def compare_refit(
    kfold_test_proba: np.ndarray,
    refit_test_proba: np.ndarray,
    *,
    oof_accuracy: float,
    n_folds: int,
    n_rows: int,
) -> pd.DataFrame:
    """The k-fold members' averaged test prediction against a refit on all rows, in numbers.

    One row per approach: models, rows each trained on, out-of-fold accuracy, test rows on which
    the two disagree, and which one to submit. The k-fold average is submitted: its accuracy is
    measured on every labelled row, while the refit is one model whose accuracy no row measures
    (its recipe's CV only suggests it); the refit's extra 1/k of rows rarely outweighs averaging
    k models, and the disagreement count says how much the choice matters.
    """
    differ = int((kfold_test_proba.argmax(1) != refit_test_proba.argmax(1)).sum())
    rows = [
        (f"{n_folds}-fold average", n_folds, n_rows * (n_folds - 1) // n_folds, oof_accuracy,
         True, "measured: out-of-fold accuracy on every labelled row"),
        ("refit on all rows", 1, n_rows, float("nan"),
         False, "unmeasured: no row held out; one model, not an average"),
    ]  # fmt: skip
    columns = ["approach", "models", "rows_per_model", "oof_accuracy", "submit", "why"]
    return pd.DataFrame(rows, columns=columns).assign(test_rows_that_differ=differ)
