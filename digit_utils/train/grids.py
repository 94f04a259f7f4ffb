"""Grids of training runs for the notebooks: policies × seeds, models × one budget, seeds × folds.

Each grid trains with :func:`loop.train`, over every visible GPU at once when there are several
(:mod:`parallel`), keeps every run folder, and returns tidy tables (one row per run, one row
per run-epoch) that the plots take directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils import paths
from digit_utils.config import TrainConfig
from digit_utils.errors import ConfigError
from digit_utils.train.inference import inference_ms
from digit_utils.train.loop import TrainResult
from digit_utils.train.parallel import train_all
from digit_utils.train.progress import bar


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
    only_folds: int | None = None,
) -> Grid:
    """Train every variant (config changes to ``base``) with every seed, and every fold if asked.

    ``folds`` ≥ 2 trains each (variant, seed) on all k folds of one stratified split, so their
    validation rows cover the whole train set once (out-of-fold). Run folders go under ``root``
    (default ``outputs/runs``) named ``<variant>-s<seed>[-f<fold>]``. ``workers`` "auto" trains
    on every visible GPU at once (one run per GPU at a time; one at a time on the CPU), with the
    results of training them one after another; ``threads`` see :func:`parallel.train_all`.
    ``extra(config)`` gives a run extra training rows ``(images, labels)`` that never validate
    (see :mod:`pseudo`): worked out here for every run first, then sent with its job.
    ``only_folds`` trains the first few of the k folds only (a screening rung: fold 0).
    """
    if not variants or not seeds:
        raise ConfigError("run_grid: need at least one variant and one seed")
    if folds == 1 or folds < 0:
        raise ConfigError(f"folds: use 0 for a holdout or ≥ 2 for k-fold, got {folds}")
    jobs = _jobs(base, variants, seeds, folds, Path(root or paths.runs_dir()), only_folds)
    # quiet: one bar for the grid; otherwise each run draws its own and this one would interleave
    shown = quiet and len(jobs) > 1
    with bar(total=len(jobs), desc="runs", unit="run", disable=not shown) as grid_bar:
        configs = [
            (job.config, job.run_dir, None if extra is None else extra(job.config)) for job in jobs
        ]
        runs = train_all(
            configs, images, labels, workers=workers, threads=threads, quiet=quiet,
            done=lambda: grid_bar.update(1),
        )  # fmt: skip
    return _tabulate(jobs, runs)


@dataclass(frozen=True)
class _Job:
    variant: str
    seed: int
    fold: int | None
    config: TrainConfig
    run_dir: Path


def _jobs(base, variants, seeds, folds: int, root: Path, only: int | None = None) -> list[_Job]:
    """One run per (variant, seed[, fold]), named ``<variant>-s<seed>[-f<fold>]`` under root."""
    jobs = []
    for variant in variants:
        for seed in seeds:
            for fold in range(min(only or folds, folds)) if folds else [None]:
                name = f"{variant}-s{seed}" + (f"-f{fold}" if fold is not None else "")
                changes = {**variants[variant], "seed": seed, "name": name}
                if fold is not None:
                    changes.update(fold=fold, n_folds=folds)
                jobs.append(_Job(variant, seed, fold, base.replace(**changes), root / name))
    return jobs


def _tabulate(jobs: list[_Job], runs: list[TrainResult]) -> Grid:
    rows, histories = [], []
    for job, result in zip(jobs, runs, strict=True):
        m = result.metrics
        rows.append(
            {
                "variant": job.variant,
                "seed": job.seed,
                "fold": job.fold,
                "model": job.config.model,
                "val_acc": m["final_val_acc"],  # the run's model; no epoch picked on these rows
                "best_val_acc": m["best_val_acc"],
                "train_seconds": m["train_seconds"],
                "params": m["params"],
                "device": m["device"],  # the device that trained it
                "run": str(result.run_dir),
            }
        )
        histories.append(result.history.assign(variant=job.variant, seed=job.seed, fold=job.fold))
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
    *,
    seeds: Sequence[int] = (0,),
    epochs: int | None = None,
    root: Path | None = None,
    quiet: bool = True,
    workers: int | str = "auto",
    threads: int | None = None,
) -> dict[str, list[str]]:
    """Retrain a recipe on every labelled row (no validation), once per seed.

    ``epochs`` is the number CV chose (default the recipe's). Returns ``{name: [run folder]}``,
    one base model per seed, as :meth:`Grid.run_groups` does. A refit has no held-out row: its
    accuracy can only be inferred from the CV of the same recipe. The seeds train at once over
    every visible GPU (``workers``, ``threads``: see :func:`parallel.train_all`).
    """
    jobs = []
    for seed in seeds:
        name = f"{cfg.name or cfg.model}-s{seed}-refit"
        run_cfg = cfg.replace(
            val_fraction=0.0, fold=None, seed=seed, epochs=epochs or cfg.epochs,
            name=name,
        )  # fmt: skip
        jobs.append((run_cfg, Path(root or paths.runs_dir()) / name))
    with bar(total=len(jobs), desc="refits", unit="run", disable=not quiet or len(jobs) < 2) as b:
        done = train_all(jobs, images, labels, workers=workers, threads=threads, quiet=quiet,
                         done=lambda: b.update(1))  # fmt: skip
    return {job[0].name: [str(result.run_dir)] for job, result in zip(jobs, done, strict=True)}


@dataclass(frozen=True)
class RefitChoice:
    """k-fold members against refits on all rows: the numbers, the choice and the reason."""

    table: pd.DataFrame  # one row per approach
    chosen: str  # "k-fold" or "refit"
    why: str


def compare_refit(
    kfold_test_proba: np.ndarray,
    refit_test_proba: np.ndarray,
    *,
    ensemble_oof: float,
    single_oof: float,
    member_rows: int,
    n_rows: int,
    kfold_models: int,
    refit_models: int,
) -> RefitChoice:
    """Choose between the k-fold members' test prediction and the refits' (averaged) one.

    What is measured: the k-fold ensemble's out-of-fold accuracy (``ensemble_oof``) and the mean
    out-of-fold accuracy of its single fold models (``single_oof``), so the gain that combining
    models bought. What is not: any refit's accuracy, since no row is held out from it. The rule,
    fixed in advance: submit the k-fold ensemble when combining its models measurably gained
    accuracy (its models each missed 1/k of the rows, and the gain shows that averaging made up
    for it); submit the refits, which saw every row, when combining gained nothing. The table
    also counts the test rows on which the two predictions differ: how much the choice matters.
    ``member_rows`` is the labelled rows each k-fold model trained on, ``n_rows`` all of them.
    """
    differ = int((kfold_test_proba.argmax(1) != refit_test_proba.argmax(1)).sum())
    gain = ensemble_oof - single_oof
    chosen = "k-fold" if gain > 0 else "refit"
    rows = [
        ("k-fold", kfold_models, member_rows, ensemble_oof,
         "measured on every labelled row, none of which its fold models trained on"),
        ("refit", refit_models, n_rows, float("nan"),
         "unmeasured: no row is held out from a model trained on all of them"),
    ]  # fmt: skip
    columns = ["approach", "models", "rows_per_model", "oof_accuracy", "accuracy_is"]
    table = pd.DataFrame(rows, columns=columns).assign(
        submit=lambda t: t.approach == chosen, test_rows_that_differ=differ
    )
    why = (
        f"Combining the k-fold models gained {gain:+.2%} out of fold over their single models "
        f"({single_oof:.2%} → {ensemble_oof:.2%}), "
        + (
            "a measured gain that outweighs the 1/k of rows each fold model missed: the k-fold "
            "ensemble is submitted."
            if chosen == "k-fold"
            else "so averaging bought nothing measurable and the refits, which trained on every "
            "row, are submitted."
        )
        + f" The two predictions differ on {differ:,} of {len(kfold_test_proba):,} test rows."
    )
    return RefitChoice(table, chosen, why)
