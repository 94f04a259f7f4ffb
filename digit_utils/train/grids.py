"""Grids of training runs for the notebooks: policies × seeds, models × one budget, seeds × folds.

Each grid trains with :func:`loop.train`, over every visible GPU at once when there are several
(:mod:`parallel`), keeps every run folder, and returns tidy tables (one row per run, one row
per run-epoch) that the plots take directly. (Just over 300 lines: the refit on all rows and the
rule that weighs it against the k-fold members sit with the grids that train them.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils import paths
from digit_utils.config import TrainConfig
from digit_utils.ensemble import soft_average
from digit_utils.errors import ConfigError
from digit_utils.stats import ALPHA, Paired, accuracy, mcnemar, p_value, power_note
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
    test: Paired | None  # the k-fold ensemble against the refits' twins; None: no twin


def compare_refit(
    kfold_correct: np.ndarray,
    twins_oof_proba: np.ndarray | None,
    oof_labels: np.ndarray,
    kfold_test_proba: np.ndarray,
    refit_test_proba: np.ndarray,
    *,
    member_rows: int,
    n_rows: int,
    kfold_models: int,
    refit_models: int,
    alpha: float = ALPHA,
) -> RefitChoice:
    """Choose between the k-fold ensemble's test prediction and the refits' (averaged) one.

    A refit trained on every labelled row, so no row can score it. What can be scored is its
    *twin*: the k-fold members with the refits' own recipe and seeds (``twins_oof_proba``,
    ``[R,N,10]`` out of fold, see :func:`members.refit_twins`), each row predicted by the fold
    networks that never saw it, averaged as the refits are. The twins are the refits trained on
    ``member_rows`` rows instead of ``n_rows``: their out-of-fold accuracy, with its Wilson
    interval, is the refits' estimate, and it leaves out both sides' unmeasured advantages (the
    refits' extra 1/k of rows; the k-fold prediction's average of k fold networks per member).

    The rule, fixed in advance: McNemar on the out-of-fold rows, the k-fold ensemble as combined
    (``kfold_correct``, per-row correctness of its chosen method) against the twins. The refits
    are submitted only when the twins are ahead beyond the noise (p < ``alpha``): the recipe
    alone measurably beats what the ensemble adds (other members, a fitted method), and a refit
    is that recipe with more rows. In every other case (the ensemble ahead, a tie within the
    noise, no discordant row at all, or no twin to score) the measured k-fold ensemble is
    submitted. The table also counts the test rows on which the two predictions differ.
    """
    kfold_correct = np.asarray(kfold_correct, dtype=bool)
    differ = int((kfold_test_proba.argmax(1) != refit_test_proba.argmax(1)).sum())
    kfold = accuracy(kfold_correct)
    if twins_oof_proba is None or len(twins_oof_proba) == 0:
        twins, test = None, None
    else:
        twin_correct = soft_average(twins_oof_proba).argmax(1) == np.asarray(oof_labels)
        twins, test = accuracy(twin_correct), mcnemar(kfold_correct, twin_correct)
    refit_ahead = test is not None and test.p < alpha and test.only_b > test.only_a
    chosen = "refit" if refit_ahead else "k-fold"
    rows = [
        ("k-fold", kfold_models, member_rows, kfold["accuracy"], kfold["low"], kfold["high"],
         "measured: out of fold, on rows none of its fold networks trained on"),
        ("refit", refit_models, n_rows, *(
            (twins["accuracy"], twins["low"], twins["high"],
             f"estimated: its twins, trained on {member_rows:,} rows, out of fold")
            if twins else (float("nan"),) * 3 + ("unmeasured: no k-fold member is its twin",))),
    ]  # fmt: skip
    columns = ["approach", "models", "rows_per_model", "oof_accuracy", "low", "high",
               "accuracy_is"]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns).assign(
        submit=lambda t: t.approach == chosen, test_rows_that_differ=differ
    )
    n_twins = 0 if twins_oof_proba is None else len(twins_oof_proba)
    why = _refit_why(kfold, twins, test, chosen, member_rows, n_rows, refit_models, alpha, n_twins)
    why += f" The two test predictions differ on {differ:,} of {len(kfold_test_proba):,} rows."
    return RefitChoice(table, chosen, why, test)


def _refit_why(kfold, twins, test, chosen, member_rows, n_rows, refit_models, alpha, n_twins):
    """The decision of :func:`compare_refit` in words, every figure from its arguments."""
    interval = lambda a: f"{a['accuracy']:.2%} (95% interval {a['low']:.2%}–{a['high']:.2%})"  # noqa: E731
    head = (
        f"The {refit_models} refit(s) trained on all {n_rows:,} labelled rows, so no row can "
        "score them. "
    )
    if twins is None:
        return head + (
            "No k-fold member shares their recipe and seed, so there is no estimate of them "
            f"either: the measured k-fold ensemble, {interval(kfold)} out of fold, is submitted."
        )
    head += (
        f"Their {n_twins} twin(s) (k-fold members of the same recipe and seed, each row "
        f"predicted by fold networks trained on {member_rows:,} rows that never saw it), "
        f"averaged, score {interval(twins)} out of fold: the refits' estimate. The k-fold "
        f"ensemble scores {interval(kfold)} on the same rows "
    )
    if test.only_a + test.only_b == 0:
        return head + (
            "and predicts every one of them as the twins do, so nothing favours the refits: "
            "the measured k-fold ensemble is submitted."
        )
    head += (
        f"({test.only_a} rows only the ensemble gets right, {test.only_b} only the twins, "
        f"McNemar {p_value(test.p)}): "
    )
    if chosen == "refit":
        return head + (
            "the refits' recipe alone is ahead beyond the noise, and the refits are that recipe "
            "trained on every row, so the refits are submitted."
        )
    if test.p < alpha:
        return head + (
            "the ensemble is ahead beyond the noise, so the k-fold ensemble is submitted."
        )
    return head + (
        f"within the noise (p ≥ {alpha:g}), so the evidence does not favour the refits and the "
        "measured k-fold ensemble is submitted, as the rule says in that case."
        + power_note(test.only_a, test.only_b, int(kfold["rows"]))
    )
