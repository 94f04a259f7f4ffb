"""Ensemble methods on synthetic probabilities with known answers; OOF loading from run folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from digit_utils import config as C
from digit_utils import ensemble, splits
from digit_utils.errors import CheckpointError, ConfigError
from digit_utils.train import inference, runs


def onehot(labels, confidence=0.9) -> np.ndarray:
    """Probabilities [N,10] putting ``confidence`` on ``labels`` and the rest spread evenly."""
    labels = np.asarray(labels)
    p = np.full((len(labels), 10), (1 - confidence) / 9, np.float32)
    p[np.arange(len(labels)), labels] = confidence
    return p


def synthetic(n=600, seed=0):
    """Labels and three base models: 85%-correct, 75%-correct, and one that says (y+1) mod 10."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    noisy = [np.where(rng.random(n) < acc, y, rng.integers(0, 10, n)) for acc in (0.85, 0.75)]
    shifted = (y + 1) % 10  # useless to averaging, perfectly informative to a meta-model
    probas = np.stack([onehot(noisy[0], 0.7), onehot(noisy[1], 0.6), onehot(shifted, 0.8)])
    return probas, y


def test_soft_average_is_the_mean_and_respects_weights():
    a, b = onehot([1, 2], 1.0), onehot([1, 3], 1.0)
    avg = ensemble.soft_average(np.stack([a, b]))
    assert avg.dtype == np.float32 and avg.shape == (2, 10)
    np.testing.assert_allclose(avg[0, 1], 1.0)
    np.testing.assert_allclose(avg[1, [2, 3]], [0.5, 0.5])
    weighted = ensemble.soft_average(np.stack([a, b]), weights=[3, 1])
    np.testing.assert_allclose(weighted[1, [2, 3]], [0.75, 0.25])
    with pytest.raises(ConfigError, match="weights"):
        ensemble.soft_average(np.stack([a, b]), weights=[1, -1])


def test_vote_follows_the_majority_even_against_the_average():
    # Two lukewarm votes for 4 beat one confident vote for 9; averaging would pick 9.
    m12 = np.zeros((1, 10), np.float32)
    m12[0, 4], m12[0, 9], m12[0, 0] = 0.40, 0.35, 0.25
    m3 = onehot([9], 0.99)
    probas = np.stack([m12, m12, m3])
    assert ensemble.majority_vote(probas).tolist() == [4]
    assert ensemble.soft_average(probas).argmax(1).tolist() == [9]


def test_vote_ties_go_to_the_larger_summed_probability():
    # Two votes each for 3 and 8; the 8-voters are surer, so 8 wins; class 0 has no votes.
    probas = np.stack([onehot([3], 0.5), onehot([3], 0.5), onehot([8], 0.9), onehot([8], 0.9)])
    assert ensemble.majority_vote(probas).tolist() == [8]
    probas = np.stack([onehot([3], 0.95), onehot([3], 0.95), onehot([8], 0.9), onehot([8], 0.9)])
    assert ensemble.majority_vote(probas).tolist() == [3]
    # Three-way tie among singletons: the tied class with the largest sum, not the lowest index.
    probas = np.stack([onehot([0], 0.4), onehot([5], 0.6), onehot([7], 0.5)])
    assert ensemble.majority_vote(probas).tolist() == [5]
    assert ensemble.majority_vote(probas).dtype == np.int64


def test_bad_shapes_are_config_errors():
    with pytest.raises(ConfigError, match=r"\[K, N, 10\]"):
        ensemble.soft_average(np.zeros((2, 5, 9)))
    with pytest.raises(ConfigError, match="labels"):
        ensemble.compare_methods(np.zeros((2, 5, 10)), np.zeros(4, np.int64))


class SpyMeta:
    """A meta-model that remembers the rows it was fitted on and asked about."""

    log: list = []

    def __init__(self):
        from sklearn.dummy import DummyClassifier

        self.inner = DummyClassifier(strategy="prior")

    def get_params(self, deep=True):
        return {}

    def set_params(self, **params):
        return self

    def fit(self, x, y):
        self.classes_ = np.arange(10)
        self.fitted = {tuple(r) for r in np.round(x, 5)}
        self.inner.fit(x, y)
        return self

    def predict_proba(self, x):
        SpyMeta.log.append((self.fitted, {tuple(r) for r in np.round(x, 5)}))
        p = np.zeros((len(x), 10))
        p[:, : len(self.inner.classes_)] = self.inner.predict_proba(x)
        return p


def test_stacker_never_sees_the_fold_it_is_scored_on():
    rng = np.random.default_rng(1)
    probas = rng.dirichlet(np.ones(10), size=(2, 200)).astype(np.float32)  # distinct rows
    y = np.arange(200) % 10
    SpyMeta.log = []
    ensemble.stacking_cv_proba(probas, y, folds=5, meta_model=SpyMeta())
    assert len(SpyMeta.log) == 5
    scored = set()
    for fitted, asked in SpyMeta.log:
        assert fitted.isdisjoint(asked)
        assert len(fitted) == 160 and len(asked) == 40
        scored |= asked
    assert len(scored) == 200  # every OOF row is scored exactly once


def test_a_memorising_stacker_cannot_cheat_its_cv_score():
    # Labels are pure noise; a 1-nearest-neighbour meta-model scored on its own training rows
    # would be 100% right. Scored properly it can only guess.
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(2)
    probas = rng.dirichlet(np.ones(10), size=(3, 500)).astype(np.float32)
    y = rng.integers(0, 10, 500)
    table = ensemble.compare_methods(
        probas, y, methods=["stack"], meta_model=KNeighborsClassifier(1)
    )
    assert table.set_index("method").loc["stack", "accuracy"] < 0.25


def test_compare_methods_scores_every_method_and_single_model():
    probas, y = synthetic()
    table = ensemble.compare_methods(probas, y, names=["a", "b", "shift"])
    acc = table.set_index("method")["accuracy"]
    assert list(table.columns) == ["method", "kind", "accuracy", "errors", "rows", "best"]
    assert set(acc.index) == {"average", "vote", "stack", "greedy", "a", "b", "shift"}
    assert acc["shift"] == 0.0
    assert acc["stack"] > 0.97  # the meta-model learns that 'shift' says y+1
    assert acc["average"] < acc["stack"]
    assert ensemble.pick_best(table) == ("stack", acc["stack"])
    assert table["best"].sum() == 1 and table["accuracy"].is_monotonic_decreasing
    assert (table.set_index("method")["rows"] == 600).all()


def test_ties_prefer_an_ensemble_over_a_single_model():
    y = np.arange(50) % 10
    probas = np.stack([onehot(y), onehot(y)])  # every method is 100% right
    table = ensemble.compare_methods(probas, y, methods=["average", "vote"])
    assert ensemble.pick_best(table) == ("average", 1.0)


def test_pick_best_among_ensembles_ignores_a_lucky_single_model():
    table = pd.DataFrame(
        {
            "method": ["m1", "average", "vote", "m0"],
            "kind": ["single", "ensemble", "ensemble", "single"],
            "accuracy": [0.995, 0.990, 0.9875, 0.985],
        }
    )
    assert ensemble.pick_best(table.assign(best=[True, False, False, False])) == ("m1", 0.995)
    assert ensemble.pick_best(table, kind="ensemble") == ("average", 0.990)
    singles = table[table.kind == "single"]
    assert ensemble.pick_best(singles, kind="ensemble") == ("m1", 0.995)  # none to pick from


def test_combine_applies_the_chosen_method_to_test_probabilities():
    oof, y = synthetic(seed=0)
    test, y_test = synthetic(n=300, seed=5)
    labels, proba = ensemble.combine("stack", test, oof_probas=oof, oof_labels=y)
    assert proba.shape == (300, 10) and proba.dtype == np.float32
    assert (labels == y_test).mean() > 0.97
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    labels, proba = ensemble.combine("vote", test)
    assert labels.tolist() == ensemble.majority_vote(test).tolist()
    np.testing.assert_allclose(proba, ensemble.soft_average(test))
    labels, proba = ensemble.combine("b", test, names=["a", "b", "shift"])
    np.testing.assert_array_equal(proba, test[1])
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        ensemble.combine("nope", test)
    with pytest.raises(ConfigError, match="oof"):
        ensemble.combine("stack", test)


def fake_run(folder, indices, proba):
    folder.mkdir(parents=True)
    np.save(folder / "val_indices.npy", np.asarray(indices, np.int64))
    np.save(folder / "val_proba.npy", np.asarray(proba, np.float32))
    runs.mark_complete(folder)
    return folder


def test_load_oof_intersects_rows_only_when_asked(tmp_path):
    a = fake_run(tmp_path / "a", [5, 1, 3], onehot([5, 1, 3]))
    b = fake_run(tmp_path / "b", [3, 9, 5], onehot([3, 9, 5]))
    with pytest.raises(ConfigError, match="'a' .* and 'b' .*hold out different rows"):
        inference.load_oof([a, b])
    oof = inference.load_oof([a, b], rows="intersect")
    assert oof.names == ["a", "b"]
    assert oof.indices.tolist() == [3, 5]
    assert oof.probas.shape == (2, 2, 10)
    # Each row's probabilities still belong to that row after sorting and intersecting.
    assert oof.probas.argmax(2).tolist() == [[3, 5], [3, 5]]


def test_load_oof_joins_the_folds_of_one_base_model(tmp_path):
    folds = [fake_run(tmp_path / f"f{i}", [i, i + 3], onehot([i, i + 3])) for i in range(3)]
    other = [fake_run(tmp_path / f"o{i}", [i, i + 3], onehot([i, i + 3], 0.5)) for i in range(3)]
    oof = inference.load_oof({"cnn_5fold": folds, "other": other})
    assert oof.names == ["cnn_5fold", "other"]
    assert oof.indices.tolist() == [0, 1, 2, 3, 4, 5]
    assert oof.probas[0].argmax(1).tolist() == [0, 1, 2, 3, 4, 5]
    clash = fake_run(tmp_path / "clash", [0], onehot([0]))
    with pytest.raises(ConfigError, match="share validation rows"):
        inference.load_oof({"x": [folds[0], clash]})


def test_load_oof_refuses_disjoint_rows_and_missing_files(tmp_path):
    a = fake_run(tmp_path / "a", [0, 1], onehot([0, 1]))
    b = fake_run(tmp_path / "b", [2, 3], onehot([2, 3]))
    with pytest.raises(ConfigError, match="different rows"):
        inference.load_oof([a, b])
    with pytest.raises(ConfigError, match="no validation row is shared"):
        inference.load_oof([a, b], rows="intersect")
    with pytest.raises(ConfigError, match="rows: 'some'"):
        inference.load_oof([a, b], rows="some")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="val_indices.npy: missing"):
        inference.load_oof([tmp_path / "empty"])
    bad = fake_run(tmp_path / "bad", [0, 1, 2], onehot([0, 1]))
    with pytest.raises(CheckpointError, match="do not match"):
        inference.load_oof([bad])
    with pytest.raises(ConfigError, match="train images"):
        inference.load_oof([a], tta=2)


@pytest.mark.filterwarnings("ignore:The least populated class")
def test_tiny_oof_sets_shrink_or_skip_the_stacker_cv():
    y = np.array([0, 0, 0, 1, 1, 2, 3, 4])  # largest class has 3 rows
    probas = np.stack([onehot(y, 0.6), onehot((y + 1) % 10, 0.6)])
    with pytest.warns(UserWarning, match="inner CV uses 3 folds, not 5"):
        table = ensemble.compare_methods(probas, y)
    assert {"stack", "greedy"} <= set(table["method"])
    y = np.arange(6)  # one row per class: no inner CV possible
    with pytest.warns(UserWarning) as caught:
        table = ensemble.compare_methods(np.stack([onehot(y)]), y)
    assert sorted(str(w.message).split(";")[1] for w in caught) == [
        " greedy left out of the comparison", " stack left out of the comparison"
    ]  # fmt: skip
    assert set(table["method"]) == {"average", "vote", "model0"}
    with pytest.raises(ConfigError, match="too few"):
        ensemble.stacking_cv_proba(np.stack([onehot(y)]), y)


def fold_runs(root, labels, configs, accuracy=0.9):
    """Fake finished runs with config.json: each config's validation rows from its split."""
    folders = []
    for i, cfg in enumerate(configs):
        cfg = C.TrainConfig(model="fast_cnn", **cfg)
        _, val = splits.split_for(cfg, labels)
        rng = np.random.default_rng(i)
        guess = np.where(rng.random(len(val)) < accuracy, labels[val], (labels[val] + 1) % 10)
        folder = fake_run(root / f"run{i}", val, onehot(guess))
        runs.write_config(folder, cfg)
        runs.mark_complete(folder)
        folders.append(folder)
    return folders


def test_runs_with_different_splits_are_refused_with_the_reason(tmp_path):
    labels = np.arange(100) % 10
    k5 = fold_runs(tmp_path / "a", labels, [{"fold": f, "n_folds": 5} for f in range(5)])
    k5_other_seed = fold_runs(
        tmp_path / "b", labels, [{"fold": f, "n_folds": 5, "split_seed": 1} for f in range(5)]
    )
    k4 = fold_runs(tmp_path / "c", labels, [{"fold": f, "n_folds": 4} for f in range(4)])
    holdout = fold_runs(tmp_path / "d", labels, [{"val_fraction": 0.2}])
    # the same folds: combined on all 100 rows
    same = fold_runs(tmp_path / "e", labels, [{"fold": f, "n_folds": 5} for f in range(5)])
    oof = inference.load_oof({"cnn": k5, "zoo": same})
    assert oof.indices.tolist() == list(range(100))
    with pytest.raises(ConfigError) as e:
        inference.load_oof({"cnn": k5, "other": k5_other_seed})
    assert "'cnn' (5-fold, split_seed 0, fold(s) 0, 1, 2, 3, 4)" in str(e.value)
    assert "'other' (5-fold, split_seed 1" in str(e.value)
    assert "split the same 100 rows into different folds" in str(e.value)
    with pytest.raises(ConfigError, match=r"\(4-fold, split_seed 0"):
        inference.load_oof({"cnn": k5, "k4": k4})
    with pytest.raises(ConfigError, match=r"'one' \(holdout 20%, split_seed 0\).*20 vs 100"):
        inference.load_oof({"one": holdout, "cnn": k5})
    # a k-fold model missing a fold covers fewer rows: refused too
    with pytest.raises(ConfigError, match="80 rows"):
        inference.load_oof({"cnn": k5, "four_of_five": same[:4]})
    oof = inference.load_oof({"one": holdout, "cnn": k5}, rows="intersect")
    assert len(oof.indices) == 20


# ------------------------------------------------------------------------------------------
# Greedy forward selection


def test_greedy_round_one_is_the_best_single_model_and_never_worse():
    probas, y = synthetic()
    for metric in ensemble.GREEDY_METRICS:
        weights = ensemble.greedy_select(probas, y, metric=metric, max_rounds=1)
        assert weights.tolist() == [1.0, 0.0, 0.0]  # 'a', the 85% model
        weights = ensemble.greedy_select(probas, y, metric=metric)
        best_single = max((p.argmax(1) == y).mean() for p in probas)
        chosen = ensemble.soft_average(probas, weights).argmax(1)
        assert (chosen == y).mean() >= best_single
        assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()


def test_greedy_adding_a_weak_model_never_hurts_the_selection():
    probas, y = synthetic()
    rng = np.random.default_rng(3)
    noise = rng.dirichlet(np.ones(10), size=len(y)).astype(np.float32)  # a chance-level model
    constant = np.full((len(y), 10), 0.1, np.float32)  # and one that knows nothing at all
    for metric in ensemble.GREEDY_METRICS:
        before = ensemble.greedy_select(probas[:2], y, metric=metric)
        after = ensemble.greedy_select(np.concatenate([probas[:2], [noise, constant]]), y,
                                       metric=metric)  # fmt: skip
        assert after[2:].tolist() == [0.0, 0.0]
        np.testing.assert_allclose(after[:2], before)


def test_greedy_finds_complementary_members_and_weights_them():
    # 'left' is right on the first half of the rows, 'right' on the second, each confidently
    # wrong elsewhere only mildly: their average is right everywhere, either alone only half.
    y = np.arange(400) % 10
    wrong = (y + 3) % 10
    half = np.arange(400) < 200
    left = np.where(half[:, None], onehot(y, 0.9), onehot(wrong, 0.3) + onehot(y, 0.2) / 2)
    right = np.where(half[:, None], onehot(wrong, 0.3) + onehot(y, 0.2) / 2, onehot(y, 0.9))
    probas = np.stack([left, right, onehot(wrong, 0.6)]).astype(np.float32)
    weights = ensemble.greedy_select(probas, y, metric="accuracy")
    assert weights[2] == 0 and weights[0] > 0 and weights[1] > 0
    assert (ensemble.soft_average(probas, weights).argmax(1) == y).all()
    labels, proba = ensemble.combine("greedy", probas, oof_probas=probas, oof_labels=y)
    assert (labels == y).all() and proba.shape == (400, 10)
    with pytest.raises(ConfigError, match="greedy: needs oof"):
        ensemble.combine("greedy", probas)


def test_greedy_rejects_bad_arguments():
    probas, y = synthetic(n=50)
    with pytest.raises(ConfigError, match="metric"):
        ensemble.greedy_select(probas, y, metric="auc")
    with pytest.raises(ConfigError, match="max_rounds"):
        ensemble.greedy_select(probas, y, max_rounds=0)
    with pytest.raises(ConfigError, match="labels"):
        ensemble.greedy_select(probas, y[:-1])


def test_greedy_cv_score_comes_from_weights_chosen_on_other_rows():
    # Noise labels and models: whichever model happens to fit the rows best is chosen on the
    # fit folds; on held-out rows it can only guess, like any model.
    rng = np.random.default_rng(4)
    probas = rng.dirichlet(np.ones(10) * 0.3, size=(8, 500)).astype(np.float32)
    y = rng.integers(0, 10, 500)
    in_sample = ensemble.soft_average(probas, ensemble.greedy_select(probas, y, metric="accuracy"))
    cv = ensemble.greedy_cv_proba(probas, y, folds=5)
    assert (cv.argmax(1) == y).mean() < (in_sample.argmax(1) == y).mean()
    assert (cv.argmax(1) == y).mean() < 0.2
