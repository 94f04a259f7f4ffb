"""The zoo's screening: its rungs, who is promoted and why, the GPU budget's cap, and the plan."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from conftest import REPO
from digit_utils import atomic, screening
from digit_utils.errors import ConfigError
from digit_utils.pipeline import budget
from digit_utils.train import screen


def test_rungs_grow_by_eta_up_to_04s_epochs_and_folds():
    rungs = screening.schedule(21, min_epochs=3, eta=3, epochs=30, n_folds=5)
    assert [(r.epochs, r.folds, r.keep) for r in rungs] == [(3, 1, 21), (10, 1, 7), (30, 5, 3)]
    # as many rungs as halving the models takes: 3 models, eta 3 -> two rungs
    two = screening.schedule(3, min_epochs=1, eta=3, epochs=8, n_folds=3)
    assert [(r.epochs, r.folds) for r in two] == [(3, 1), (8, 3)]
    assert len(screening.schedule(5, min_epochs=4, eta=3, epochs=4, n_folds=0)) == 1
    with pytest.raises(ConfigError, match="eta"):
        screening.schedule(5, min_epochs=1, eta=1, epochs=4, n_folds=0)


def _correct(hits: dict[str, int], rows: int = 400) -> dict[str, np.ndarray]:
    """Per-row correctness: ``hits`` right rows each, the misses spread so pairs disagree."""
    out = {}
    for i, (name, right) in enumerate(hits.items()):
        row = np.zeros(rows, bool)
        row[np.roll(np.arange(rows), 37 * i)[:right]] = True
        out[name] = row
    return out


def test_the_cut_keeps_the_top_and_ties_with_it_and_drops_the_clearly_worse():
    correct = _correct({"a": 300, "b": 396, "c": 390, "d": 200})  # simplest first
    ranked, close = screening.rank(correct, keep=1)
    assert ranked == ["b", "c", "a", "d"]
    assert close == {"c"}  # 390 against 396 is within noise; 300 and 200 are not
    rungs = screening.schedule(4, min_epochs=1, eta=4, epochs=4, n_folds=2)
    seconds = dict.fromkeys(correct, 1.0)
    step = screening.promote(ranked, close, 1, rungs[1:], seconds, budget_left=1e9)
    assert step.promoted == ["b", "c"] and not step.capped
    assert step.stopped == {"a": "below the cut", "d": "below the cut"}
    # deterministic: the same scores give the same promotion
    assert screening.promote(ranked, close, 1, rungs[1:], seconds, 1e9) == step


def test_ties_in_accuracy_go_to_the_simpler():
    correct = _correct({"small": 380, "big": 380})
    assert screening.rank(correct, keep=1)[0] == ["small", "big"]


def test_the_budget_promotes_fewer_and_never_overspends():
    rungs = screening.schedule(4, min_epochs=1, eta=2, epochs=4, n_folds=2)
    seconds = {"a": 1.0, "b": 100.0, "c": 1.0, "d": 1.0}
    correct = _correct({"a": 390, "b": 396, "c": 389, "d": 100})
    ranked, close = screening.rank(correct, keep=rungs[1].keep)
    loose = screening.promote(ranked, close, rungs[1].keep, rungs[1:], seconds, 1e9)
    assert loose.promoted == ["b", "a", "c"]
    # 150 s left: b's 2 epochs (200 s) do not fit; the rule's next ones do
    tight = screening.promote(ranked, close, rungs[1].keep, rungs[1:], seconds, 150.0)
    assert tight.promoted == ["a", "c"] and tight.capped and tight.stopped["b"] == "the budget"
    models = list(seconds)
    for cap in (113.0, 400.0, 2000.0):  # 113 s: rung 0 and the cheapest to the end
        at, _ = screening.worst_case(models, rungs, seconds, cap)
        pairs = zip(rungs, at, strict=True)
        spent = sum(r.epochs * r.folds * seconds[m] for r, ms in pairs for m in ms)
        assert spent <= cap and at[0] == models and all(at[1:])
    with pytest.raises(ConfigError, match="max_gpu_hours"):
        screening.worst_case(models, rungs, seconds, 112.0)


def _zoo_hours(overrides=None) -> tuple[float, float]:
    plan = budget.plan_budget(REPO / "notebooks", REPO / "params" / "full.yaml", overrides)
    return plan.stage_hours()["03_model_zoo"], plan


def test_the_full_profiles_zoo_fits_one_t4_hour_and_max_gpu_hours_changes_the_plan():
    (low, high), plan = _zoo_hours()
    assert high <= 1.0 and low > 0  # T4 GPU-hours at the slow assumption: half that of T4×2
    zoo = [w for w in plan.work if w.stage == "03_model_zoo"]
    rung0 = [w for w in zoo if w.epochs == 3]
    assert len(rung0) == 21 and all(w.runs == (1, 1) for w in rung0)  # every model a row
    last = [w for w in zoo if w.epochs == 30]
    assert last and all(w.runs == (0, 5) for w in last)  # 04's epochs on 04's 5 folds
    (_, tight), _ = _zoo_hours(["03_model_zoo.max_gpu_hours=0.5"])
    assert tight <= 0.5 < high
    with pytest.raises(ConfigError, match="max_gpu_hours"):
        _zoo_hours(["03_model_zoo.max_gpu_hours=0.1"])  # rung 0 alone needs more


def test_runs_on_disk_reads_each_rungs_folder_and_ignores_older_or_foreign_runs(tmp_path):
    def run(folder, name, **config):
        atomic.write_json(config, tmp_path / folder / name / "config.json")

    rungs = [screening.Rung(0, 1, 1, 3), screening.Rung(1, 3, 2, 1)]
    run("rung0", "old", model="a", epochs=1, fold=0)
    os.utime(tmp_path / "rung0" / "old" / "config.json", (0, 0))  # an earlier screening's
    since = time.time() - 60
    for m in "abc":
        run("rung0", m, model=m, epochs=1, fold=0)
    run("rung0", "other-fold", model="a", epochs=1, fold=1)  # not how a rung before the last runs
    run(".", "b-f0", model="b", epochs=3, fold=0)
    run(".", "b-f1", model="b", epochs=3, fold=1)
    run(".", "stale-epochs", model="c", epochs=2, fold=0)  # another profile's last rung
    found = screen.runs_on_disk(tmp_path, rungs, since=since)
    assert sorted(map(tuple, found[["rung", "model", "fold"]].values.tolist())) == [
        (0, "a", 0), (0, "b", 0), (0, "c", 0), (1, "b", 0), (1, "b", 1)]  # fmt: skip
    assert found.epochs.tolist().count(3) == 2
