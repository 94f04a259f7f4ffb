"""Grids of training runs for the notebooks: policies × seeds, models × one budget, seeds × folds.

Each grid trains with :func:`train.train`, over every visible GPU at once when there are several
(:mod:`device_pool`), keeps every run folder, and returns tidy tables (one row per run, one row
per run-epoch) that the plots take directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths
from .config import TrainConfig
from .device_pool import train_all
from .errors import ConfigError
from .predict import inference_ms
from .progress import bar
from .train import TrainResult


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
) -> Grid:
    """Train every variant (config changes to ``base``) with every seed, and every fold if asked.

    ``folds`` ≥ 2 trains each (variant, seed) on all k folds of one stratified split, so their
    validation rows cover the whole train set once (out-of-fold). Run folders go under ``root``
    (default ``outputs/runs``) named ``<variant>-s<seed>[-f<fold>]``. ``workers`` "auto" trains
    on every visible GPU at once (one run per GPU at a time; one at a time on the CPU), with the
    results of training them one after another; ``threads`` see :func:`device_pool.train_all`.
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
        runs = train_all(
            configs, images, labels, workers=workers, threads=threads, quiet=quiet,
            done=lambda: grid_bar.update(1),
        )  # fmt: skip
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
