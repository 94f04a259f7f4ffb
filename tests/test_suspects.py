"""Ranking labelled rows by the out-of-fold loss of their given label: a planted wrong label
comes first, whatever label smoothing did to the models' confidence."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from digit_utils.errors import ConfigError, DataError
from digit_utils.notebook import plots, suspects
from digit_utils.train import runs


def _smoothed(labels: np.ndarray, cap: float, rng) -> np.ndarray:
    """Probabilities of a model trained with label smoothing: at most ``cap`` on any class,
    a little noise, rows summing to 1."""
    p = np.full((len(labels), 10), (1 - cap) / 9) + rng.uniform(0, 0.01, (len(labels), 10))
    p[np.arange(len(labels)), labels] = cap
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _two_folds_two_seeds(true: np.ndarray, cap: float, seed=0):
    """Two seeds, each scoring rows 0..n/2 and n/2..n out of fold, both believing ``true``."""
    rng = np.random.default_rng(seed)
    half = len(true) // 2
    folds = [np.arange(half), np.arange(half, len(true))]
    return [(idx, _smoothed(true[idx], cap, rng)) for _ in range(2) for idx in folds]


@pytest.mark.parametrize("cap", [0.91, 0.6])  # smoothing 0.1, and a much heavier smoothing
def test_a_planted_wrong_label_ranks_first(cap):
    true = np.arange(40) % 10
    given = true.copy()
    given[17] = (true[17] + 3) % 10  # the one wrong label; the models still see the true digit
    table = suspects.rank(_two_folds_two_seeds(true, cap), given)
    assert table.loc[0, ["row", "label", "predicted"]].tolist() == [17, given[17], true[17]]
    assert (table.predicted != table.label).sum() == 1  # every other row agrees with its label
    assert len(table) == 40 and sorted(table.row) == list(range(40)) and (table.runs == 2).all()


def test_the_loss_is_of_the_mean_probability_over_the_runs_covering_a_row():
    labels = np.array([0, 1, 2])
    a = np.eye(10, dtype=np.float32)[[0, 0]] * 0.5 + 0.05  # rows 0 and 2, both seen as 0
    b = np.eye(10, dtype=np.float32)[[1, 1]] * 0.5 + 0.05  # rows 0 and 1, both seen as 1
    table = suspects.rank([(np.array([0, 2]), a), (np.array([0, 1]), b)], labels).set_index("row")
    mean0 = (a[0] + b[0]) / 2
    assert table.loc[0, "runs"] == 2 and table.loc[1, "runs"] == 1 and table.loc[2, "runs"] == 1
    assert table.loc[0, "loss"] == pytest.approx(-np.log(mean0[0]))
    assert table.loc[2, "loss"] == pytest.approx(-np.log(0.05))  # row 2 labelled 2, scored as 0
    assert table.loc[1, "loss"] == pytest.approx(-np.log(0.55))
    assert mean0[0] == pytest.approx(0.30)  # the two runs disagree on row 0
    assert list(table.index) == [2, 0, 1]  # loss 3.00, then 1.20, then 0.60


def test_ties_keep_row_order_and_integer_columns_stay_integers():
    p = np.full((4, 10), 0.1, dtype=np.float32)
    table = suspects.rank([(np.arange(4), p)], np.array([3, 1, 2, 0]))
    assert table.row.tolist() == [0, 1, 2, 3]
    assert all(table[c].dtype == np.int64 for c in ("row", "label", "predicted", "runs"))


def test_a_zero_probability_still_ranks():
    p = np.zeros((2, 10), dtype=np.float32)
    p[:, 5] = 1.0
    table = suspects.rank([(np.array([0, 1]), p)], np.array([5, 4]))
    assert table.row.tolist() == [1, 0] and np.isfinite(table.loss).all()


def test_bad_input_is_refused():
    p = np.full((2, 10), 0.1, dtype=np.float32)
    with pytest.raises(DataError, match="outside the 2 labels"):
        suspects.rank([(np.array([0, 2]), p)], np.array([0, 1]))
    with pytest.raises(DataError, match=r"parts\[0\].*do not match"):
        suspects.rank([(np.array([0]), p)], np.array([0, 1]))
    with pytest.raises(DataError, match="labels: expected int"):
        suspects.rank([(np.array([0, 1]), p)], np.array([0.0, 1.0]))
    with pytest.raises(ConfigError, match="parts"):
        suspects.rank([], np.array([0, 1]))


def test_from_runs_reads_the_run_folders(tmp_path):
    true = np.arange(20) % 10
    given = true.copy()
    given[4] = 9
    folders = []
    for i, (idx, proba) in enumerate(_two_folds_two_seeds(true, 0.91)):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        runs.write_validation(folder, idx, proba)
        runs.mark_complete(folder)
        folders.append(folder)
    table = suspects.from_runs(folders, given)
    assert table.row.iloc[0] == 4 and (table.runs == 2).all()


def test_the_grid_shows_each_ranked_row_with_its_caption():
    images = np.arange(30, dtype=np.uint8).repeat(28 * 28).reshape(30, 1, 28, 28)  # image i: i
    true = np.arange(30) % 10
    table = suspects.rank(_two_folds_two_seeds(true, 0.91), np.roll(true, 1)).head(12)
    fig = plots.suspects(images, table, what="test")
    shown = [ax for ax in fig.axes if ax.images]
    assert [int(ax.images[0].get_array().mean()) for ax in shown] == table.row.tolist()
    row, label, predicted, loss = (table.loc[0, c] for c in ("row", "label", "predicted", "loss"))
    assert shown[0].get_title() == f"#{row}\n{label}→{predicted}  {loss:.2f}"
    matplotlib.pyplot.close(fig)
