"""The labelled rows the models disagree with most: every out-of-fold row ranked by the
cross-entropy of its given label under the runs' averaged probabilities.

A rank, not a threshold: label smoothing caps what a model puts on any label (0.91 at 0.1), so
"confident and wrong" depends on the recipe, while the order of the losses does not. A row at
the top is a wrong label, an ambiguous digit or a model's blind spot; only a look tells which.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from digit_utils.errors import ConfigError, DataError
from digit_utils.train import runs

NUM_CLASSES = 10
TINY = 1e-12  # the least probability a loss is taken of: log(0) is no ranking
COLUMNS = ("row", "label", "predicted", "loss", "p_label", "p_predicted", "runs")


def rank(parts: Sequence[tuple[np.ndarray, np.ndarray]], labels: np.ndarray) -> pd.DataFrame:
    """Every row some part scored, highest loss first (ties: lower row first).

    ``parts`` are runs' ``(val_indices int [m], val_proba float [m,10])``; a row scored by
    several runs (seeds, members) gets the mean of their probabilities. ``labels`` are the given
    labels of the whole train set (``int [N]``). Columns: ``row``, ``label``, ``predicted``
    (the averaged probabilities' argmax), ``loss`` (``-log p(label)``), ``p_label``,
    ``p_predicted``, ``runs`` (how many runs scored the row).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels: expected int [N], got {labels.dtype} {labels.shape}")
    if len(parts) == 0:
        raise ConfigError("parts: no runs' validation rows given")
    total = np.zeros((len(labels), NUM_CLASSES))
    count = np.zeros(len(labels), dtype=np.int64)
    for i, (idx, proba) in enumerate(parts):
        idx, proba = np.asarray(idx), np.asarray(proba, dtype=np.float64)
        if idx.ndim != 1 or proba.shape != (len(idx), NUM_CLASSES):
            raise DataError(f"parts[{i}]: indices {idx.shape} and probabilities {proba.shape} "
                            "do not match")  # fmt: skip
        if len(idx) and (idx.min() < 0 or idx.max() >= len(labels)):
            raise DataError(f"parts[{i}]: row indices outside the {len(labels):,} labels")
        np.add.at(total, idx, proba)
        count += np.bincount(idx, minlength=len(labels))
    rows = np.flatnonzero(count)
    mean = total[rows] / count[rows, None]
    given = labels[rows]
    predicted = mean.argmax(axis=1)
    p_label = mean[np.arange(len(rows)), given]
    loss = -np.log(np.maximum(p_label, TINY))
    order = np.lexsort((rows, -loss))  # the last key sorts first
    table = pd.DataFrame({
        "row": rows, "label": given, "predicted": predicted, "loss": loss, "p_label": p_label,
        "p_predicted": mean[np.arange(len(rows)), predicted], "runs": count[rows],
    })  # fmt: skip
    return table.iloc[order].reset_index(drop=True).astype({c: np.int64 for c in COLUMNS[:3]})


def from_runs(run_dirs: Iterable, labels: np.ndarray) -> pd.DataFrame:
    """:func:`rank` over run folders (each one's saved ``val_indices`` and ``val_proba``)."""
    return rank([runs.read_validation(r) for r in run_dirs], labels)
