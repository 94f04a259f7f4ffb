"""The zoo's screening run: rung by rung, every rung's runs over the device pool (:mod:`grids`),
then the promotion of :mod:`digit_utils.screening` on their per-row correctness.

Rungs before the last train fold 0 of the final split (the same split seed as 04_train_cnn), in
``<root>/rung<r>/``; the last rung trains every fold in ``<root>/`` itself, so its run groups are
the zoo's run list that 05 weighs against 04's runs on the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils import screening, stats
from digit_utils.config import TrainConfig
from digit_utils.train import grids, inference, runs


@dataclass
class Screen:
    """What the screening did: every architecture's row, every rung's scores, the last rung."""

    table: pd.DataFrame  # one row per architecture, simplest first
    scores: pd.DataFrame  # one row per (architecture, rung it trained at): the figure's data
    final: grids.Grid  # the last rung's runs (the zoo's run list)
    correct: dict[str, np.ndarray]  # the last rung's per-row correctness, simplest first
    rungs: list[screening.Rung]
    capped: bool  # max_gpu_hours kept out a model the rule would have promoted

    def leaderboard(self, decision: stats.Decision) -> pd.DataFrame:
        """The table with the last rung's decision (McNemar against its best) beside it."""
        cols = ["only_best", "only_self", "p", "within_noise", "chosen"]
        board = self.table.join(decision.table[cols], on="model")
        return board.fillna({"within_noise": False, "chosen": False}).astype(
            {"within_noise": bool, "chosen": bool}
        )


def run_screen(
    images: np.ndarray,
    labels: np.ndarray,
    base: TrainConfig,
    models: Sequence[str],
    rungs: Sequence[screening.Rung],
    seconds: Mapping[str, float],
    max_seconds: float,
    *,
    n_folds: int,
    seed: int = 0,
    root: Path,
    device: str = "auto",
) -> Screen:
    """Screen ``models`` over ``rungs`` (``seconds``: T4 GPU-seconds of one epoch of one fold's
    run per model, what ``max_seconds`` is paid from)."""
    screening.check_budget(models, rungs, seconds, max_seconds)
    names, spent, capped = list(models), 0.0, False
    scores, stopped, last_runs = [], {}, {}
    for rung in rungs:
        last = rung.index == len(rungs) - 1
        grid = grids.run_grid(
            images, labels, base, {m: {"model": m, "epochs": rung.epochs} for m in names},
            seeds=[seed], folds=n_folds, root=root if last else root / f"rung{rung.index}",
            only_folds=None if last else 1,
        )  # fmt: skip
        if rung.index == 0:  # simplest (fewest parameters) first, as stats' rule reads them
            params = dict(zip(grid.results.model, grid.results.params.astype(int), strict=True))
            names = sorted(names, key=lambda m: (params[m], names.index(m)))
        oof = inference.load_oof(grid.run_groups())
        found = stats.correct_by(oof.probas, oof.names, labels[oof.indices],
                                 key=lambda run: run.rsplit("-s", 1)[0])  # fmt: skip
        correct = {m: found[m] for m in names}
        for m in names:
            runs = grid.results[grid.results.model == m]
            last_runs[m] = (rung, runs, next(r for r in grid.runs if r.config.model == m))
            scores.append({"model": m, "rung": rung.index, "epochs": rung.epochs,
                           "folds": rung.folds, "budget": rung.budget,
                           "gpu_minutes": screening.cost(rung, m, seconds) / 60,
                           "train_seconds": float(runs.train_seconds.sum()),
                           **stats.accuracy(correct[m])})  # fmt: skip
        spent += sum(screening.cost(rung, m, seconds) for m in names)
        if last:
            stopped.update({m: "last rung" for m in names})
            break
        ahead = rungs[rung.index + 1 :]
        ranked, close = screening.rank(correct, ahead[0].keep)
        step = screening.promote(ranked, close, ahead[0].keep, ahead, seconds, max_seconds - spent)
        capped |= step.capped
        stopped.update({m: f"rung {rung.index}: {why}" for m, why in step.stopped.items()})
        names = [m for m in names if m in step.promoted]  # simplest first still
    scores = pd.DataFrame(scores)
    table = _table(scores, stopped, last_runs, params, images, device)
    return Screen(table, scores, grid, correct, list(rungs), capped)


def _table(scores, stopped, last_runs, params, images, device) -> pd.DataFrame:
    """One row per architecture: where it stopped and why, its accuracy there (with the
    interval, on that rung's rows) and at each rung, its time and its inference speed."""
    rows = []
    by_rung = scores.drop_duplicates("rung").sort_values("rung")
    rung_cols = [f"acc_{s.epochs}ep_{s.folds}f" for s in by_rung.itertuples()]
    for m in sorted(params, key=lambda m: params[m]):
        mine = scores[scores.model == m]
        at = mine.iloc[-1]
        rung, runs, first = last_runs[m]
        row = {"model": m, "params": int(params[m]), "rung": int(at.rung),
               "epochs": int(at.epochs), "folds": int(at.folds), "stopped": stopped[m],
               "accuracy": at.accuracy, "low": at.low, "high": at.high,
               "rows": int(at.rows)}  # fmt: skip
        row.update(dict.fromkeys(rung_cols, float("nan")))  # the rungs it never reached
        for s in mine.itertuples():
            row[f"acc_{s.epochs}ep_{s.folds}f"] = s.accuracy
        row.update(
            gpu_minutes=float(mine.gpu_minutes.sum()),  # T4, by the cost table
            train_seconds=float(mine.train_seconds.sum()),  # measured, every rung
            trained_on=runs.device.iloc[0],
            infer_ms_per_1000=inference.inference_ms(first.model, images, device),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def runs_on_disk(root: Path, rungs: Sequence[screening.Rung], since: float) -> pd.DataFrame:
    """The screening's runs read back from their folders' config.json, not from its tables (what
    the notebook checks its sentences against): one row per run (rung, model, epochs, fold),
    every rung's folder as :func:`run_screen` lays it out, only runs configured at or after
    ``since`` (the notebook's start: a grid rewrites every run it trains)."""
    rows = []
    for rung in rungs:
        last = rung.index == len(rungs) - 1
        folder = root if last else root / f"rung{rung.index}"
        for path in sorted(folder.glob(f"*/{runs.CONFIG}")):
            config = runs.read_config(path.parent)
            if config is None or path.stat().st_mtime < since:
                continue
            if config.get("epochs") == rung.epochs and (last or config.get("fold") in (0, None)):
                rows.append({"rung": rung.index, "model": config.get("model"),
                             "epochs": config["epochs"], "fold": config.get("fold")})  # fmt: skip
    return pd.DataFrame(rows, columns=["rung", "model", "epochs", "fold"])
