"""Every numbered notebook, executed end to end by the pipeline runner with tiny parameters.

The five notebooks run once, in order, on 600 training / 200 test digits of the offline sample
(one epoch, CPU); the tests then check what each one wrote. Committed notebooks are also checked
for outputs and for their `parameters` cell.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from digit_utils import data, notebook, pipeline, stages
from digit_utils.data.submission import validate_submission
from digit_utils.errors import ConfigError

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
STAGES = [p.stem for p in NOTEBOOKS]
TINY = {
    "01_eda": {"tsne_samples": 150},
    "02_augmentation": {"epochs": 1, "seeds": 1, "n_folds": 2, "policies": "none, affine_elastic"},
    # screened: both 1 epoch on fold 0, the better (and a tie) 2 epochs on 04's two folds
    "03_model_zoo": {
        "models": "simple_cnn, fast_cnn",
        "min_epochs": 1,
        "eta": 2,
        "epochs": 2,
        "n_folds": 2,
    },  # fmt: skip
    # model "auto": the zoo's choice; the zoo's folds, so 05 adds the zoo's runs as members
    "04_train_cnn": {"epochs": 1, "seeds": 1, "tta": 1, "n_folds": 2, "refit": True},
    # a low bar: after one epoch on 300 rows the models put at most about 0.3 on any digit
    "05_ensemble_submission": {"tta": 1, "cv_folds": 3, "pseudo_threshold": 0.15},
}


def test_the_five_notebooks_exist():
    assert STAGES == list(stages.STAGES) == list(TINY)


# Another shape of run, where the sentences' premises differ: one holdout instead of folds, two
# seeds, TTA off, 3-epoch curves, 02 on a sample of rows, one zoo model (on 04's holdout, so it
# may join 05), no refit and no second round. Every nb.say check runs in it too.
OTHER = {
    "01_eda": {"tsne_samples": 100},
    "02_augmentation": {"epochs": 3, "seeds": 2, "n_folds": 0, "val_fraction": 0.25,
                        "rows": 400, "tta": 0, "policies": "none, affine"},
    "03_model_zoo": {"models": "fast_cnn", "min_epochs": 3, "epochs": 3, "n_folds": 0,
                     "val_fraction": 0.25},
    "04_train_cnn": {"epochs": 3, "seeds": 2, "tta": 0, "n_folds": 0, "val_fraction": 0.25,
                     "refit": False},
    "05_ensemble_submission": {"tta": 0, "cv_folds": 3, "pseudo_threshold": 0},
}  # fmt: skip


@pytest.fixture(scope="module")
def ran(tmp_path_factory, sample_dir):
    """Run the whole pipeline once on a tiny slice of the offline sample."""
    return _run(tmp_path_factory, sample_dir, TINY)


@pytest.fixture(scope="module")
def ran_other(tmp_path_factory, sample_dir):
    """The same, in the other shape of run."""
    return _run(tmp_path_factory, sample_dir, OTHER)


def _run(tmp_path_factory, sample_dir, params: dict):
    root = tmp_path_factory.mktemp("project")
    tiny = data.copy_subset(data.DataSource(sample_dir, "sample"), root / "tiny", 600, 200)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIGITS_ROOT", str(root))
        mp.setenv("MPLBACKEND", "Agg")
        mp.delenv("DIGITS_OUTPUTS", raising=False)
        mp.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
        profile = root / "tiny.yaml"
        profile.write_text(json.dumps({"device": "cpu", "data_dir": str(tiny), **params}))
        record = pipeline.run_pipeline(
            profile=str(profile), notebooks_dir=REPO / "notebooks", outputs=root / "outputs"
        )
    return root / "outputs", record


def _metrics(outputs: Path, stage: str) -> dict:
    return json.loads((outputs / stage / "metrics.json").read_text())


def test_pipeline_ran_every_notebook(ran):
    outputs, record = ran
    assert [(nb["name"], nb["status"]) for nb in record["notebooks"]] == [
        (stage, "ok") for stage in STAGES
    ]
    for stage in STAGES:
        assert (outputs / "notebooks" / f"{stage}.ipynb").is_file()
        assert (outputs / "reports" / f"{stage}.html").stat().st_size > 50_000  # with figures
    assert json.loads((outputs / "pipeline.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("stage", STAGES)
def test_each_notebook_saved_its_figures_and_metrics(ran, stage):
    outputs, _ = ran
    record = _metrics(outputs, stage)
    assert record["stage"] == stage and record["metrics"]
    assert record["data"]["is_sample"] is True  # the tiny slice keeps the sample's test labels
    assert record["figures"], "every notebook shows at least one figure"
    for name in record["figures"]:
        png = outputs / stage / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    executed = nbformat.read(outputs / "notebooks" / f"{stage}.ipynb", as_version=4)
    images = [
        o
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= len(record["figures"])  # shown inline, not only saved


def test_eda_numbers(ran):
    m = _metrics(ran[0], "01_eda")["metrics"]
    assert (m["train_images"], m["test_images"]) == (600, 200)
    assert m["within_train"] == 0 and 1.0 <= m["imbalance_ratio"] < 2


def test_augmentation_choice_feeds_training(ran):
    outputs, _ = ran
    choice = json.loads((outputs / "02_augmentation" / "policy.json").read_text())
    assert choice["policy"] in ("none", "affine_elastic")
    assert choice["rows"] == 600  # two folds: every labelled row scored every policy
    trained = _metrics(outputs, "04_train_cnn")["metrics"]
    assert trained["augmentation"] == f"02_augmentation chose {choice['policy']!r}"


def test_zoo_choice_feeds_training(ran):
    outputs, _ = ran
    choice = json.loads((outputs / "03_model_zoo" / "choice.json").read_text())
    assert choice["model"] in choice["ties"] and choice["model"] in ("simple_cnn", "fast_cnn")
    trained = _metrics(outputs, "04_train_cnn")["metrics"]
    assert (trained["model"], trained["model_origin"]) == (
        choice["model"],
        f"03_model_zoo chose {choice['model']!r}",
    )


def test_training_recorded_its_runs_for_the_ensemble(ran):
    outputs, _ = ran
    listing = json.loads((outputs / "04_train_cnn" / "runs.json").read_text())["models"]
    model = _metrics(outputs, "04_train_cnn")["metrics"]["model"]
    assert list(listing) == [f"{model}-s0"]
    assert [Path(r).name for r in listing[f"{model}-s0"]] == [f"{model}-s0-f0", f"{model}-s0-f1"]
    for run in listing[f"{model}-s0"]:
        folder = outputs / run
        for name in ("config.json", "history.csv", "metrics.json", "best.pt", "last.pt"):
            assert (folder / name).is_file()
    m = _metrics(outputs, "04_train_cnn")["metrics"]
    assert m["oof_rows"] == 600  # two folds: every labelled row out of fold
    _check_suspicious_rows(outputs, 24)
    assert m["val_acc_mean"] > 0.1  # better than chance after one epoch
    refits = json.loads((outputs / "04_train_cnn" / "refit_runs.json").read_text())["models"]
    [[refit]] = refits.values()
    assert m["refits"] == 1 and json.loads((outputs / refit / "metrics.json").read_text())[
        "n_train"] == 600  # fmt: skip
    zoo = json.loads((outputs / "03_model_zoo" / "runs.json").read_text())["models"]
    board = json.loads((outputs / "03_model_zoo" / "leaderboard.json").read_text())
    assert sorted(zoo) == sorted(f"{r['model']}-s0" for r in board if r["rung"] == 1)


def test_model_zoo_leaderboard(ran):
    board = pd.DataFrame(json.loads((ran[0] / "03_model_zoo" / "leaderboard.json").read_text()))
    assert sorted(board["model"]) == ["fast_cnn", "simple_cnn"]
    assert (board["params"] > 1000).all() and (board["infer_ms_per_1000"] > 0).all()
    assert board["params"].is_monotonic_increasing  # simplest first, as the rule reads them
    # the last rung on both folds (every row), the one left at rung 0 on fold 0 (half of them)
    assert set(board["rows"]) <= {300, 600} and (board["rows"] == 600 * board["rung"] + 300
                                                - 300 * board["rung"]).all()  # fmt: skip
    assert (board["low"] <= board["accuracy"]).all() and board["acc_1ep_1f"].notna().all()
    assert board["chosen"].sum() == 1 and board.loc[board["chosen"], "rung"].item() == 1
    assert (ran[0] / "03_model_zoo" / "screening.png").is_file()


def _oof_correct(outputs: Path, runs: list[str], labels: np.ndarray) -> np.ndarray:
    """A k-fold model's per-row correctness, read straight from its run folders."""
    correct = np.zeros(len(labels), bool)
    for run in runs:
        rows = np.load(outputs / run / "val_indices.npy")
        correct[rows] = np.load(outputs / run / "val_proba.npy").argmax(1) == labels[rows]
    return correct


def _check_suspicious_rows(outputs: Path, n_shown: int) -> None:
    """04's most suspicious rows, against the given labels' loss recomputed here from its run
    folders: each row's probabilities averaged over the runs that held it out."""
    labels = pd.read_csv(outputs.parent / "tiny" / "train.csv")["label"].to_numpy()
    record = _metrics(outputs, "04_train_cnn")
    shown = record["metrics"]["suspicious_rows"]
    assert "suspects.png" in record["figures"]
    assert len(shown) == n_shown == len(set(shown)) and all(isinstance(r, int) for r in shown)
    listing = json.loads((outputs / "04_train_cnn" / "runs.json").read_text())["models"]
    total, count = np.zeros((len(labels), 10)), np.zeros(len(labels))
    for run in (r for runs in listing.values() for r in runs):
        rows = np.load(outputs / run / "val_indices.npy")
        total[rows] += np.load(outputs / run / "val_proba.npy")
        count[rows] += 1
    scored = np.flatnonzero(count)
    assert set(shown) <= set(scored.tolist())  # rows no model trained on, inside train.csv
    p_given = total[scored, labels[scored]] / count[scored]
    loss = pd.Series(-np.log(p_given), index=scored)
    assert loss[shown].is_monotonic_decreasing  # most suspicious first
    assert loss[shown].min() >= loss.drop(shown).max() - 1e-6  # no row left out is worse
    assert "the ones the models disagree with most" in _markdown_outputs(outputs, "04_train_cnn")
    for stage in ("04_train_cnn", "05_ensemble_submission"):  # tables name runs, not folders
        assert str(outputs.parent) not in _html_outputs(outputs, stage)


def _zoo_models_04_does_not_beat(outputs: Path) -> list[str]:
    """The zoo's models 05 should add, recomputed here from the run folders with scipy's own
    binomial test: those 04's best run does not beat out of fold (McNemar p < 0.05)."""
    from scipy.stats import binomtest

    labels = pd.read_csv(outputs.parent / "tiny" / "train.csv")["label"].to_numpy()
    listed = lambda stage: json.loads((outputs / stage / "runs.json").read_text())["models"]  # noqa: E731
    trained = {n: _oof_correct(outputs, r, labels) for n, r in listed("04_train_cnn").items()}
    best = max(trained.values(), key=lambda c: c.sum())
    joined = []
    for name, runs in listed("03_model_zoo").items():
        zoo = _oof_correct(outputs, runs, labels)
        only_best, only_zoo = int((best & ~zoo).sum()), int((zoo & ~best).sum())
        p = binomtest(only_best, only_best + only_zoo).pvalue if only_best + only_zoo else 1.0
        if not (p < 0.05 and only_best > only_zoo):
            joined.append(name)
    return joined


def test_submission_is_valid_and_scored_on_the_sample(ran):
    outputs, _ = ran
    frame = validate_submission(outputs / "submission.csv", expected_rows=200)
    assert frame["ImageId"].tolist() == list(range(1, 201))
    provenance = json.loads((outputs / "submission.json").read_text())
    m = _metrics(outputs, "05_ensemble_submission")["metrics"]
    assert provenance["approach"] == m["approach"] in ("k-fold", "refit")
    joined = _zoo_models_04_does_not_beat(outputs)
    assert m["zoo_models"] == len(joined) and m["models"] == 1 + len(joined)  # 04's, the zoo's
    assert m["refits"] == 1
    assert 0.0 <= m["sample_test_accuracy"] <= 1.0
    # the second round: test rows joined training, scores stayed on the 600 labelled rows
    assert m["pseudo_test_rows"] > 0 and provenance["pseudo_labels"]["kept"] == m["pseudo_kept"]
    assert 0 < m["pseudo_oof_before"] <= 1 and 0 < m["pseudo_oof_after"] <= 1
    submitted = json.loads((outputs / "05_ensemble_submission" / "runs.json").read_text())
    assert len(submitted["models"]) == (m["models"] if m["approach"] == "k-fold" else 1)


def test_the_other_shape_of_run_reads_true(ran_other):
    outputs, record = ran_other  # a sentence whose check fails stops its notebook: status error
    assert [(nb["name"], nb["status"]) for nb in record["notebooks"]] == [
        (stage, "ok") for stage in STAGES
    ]
    policy = json.loads((outputs / "02_augmentation" / "policy.json").read_text())
    assert policy["rows"] == 2 * 100  # a quarter of the 400-row sample, its 2 seeds pooled
    m = _metrics(outputs, "04_train_cnn")["metrics"]
    assert (m["runs"], m["oof_rows"], m.get("refits", 0)) == (2, 150, 0)
    assert not (outputs / "04_train_cnn" / "refit_runs.json").exists()
    _check_suspicious_rows(outputs, 24)  # two seeds on one holdout: their mean
    last = _metrics(outputs, "05_ensemble_submission")["metrics"]
    assert last["approach"] == "k-fold" and last["refits"] == 0
    validate_submission(outputs / "submission.csv", expected_rows=200)
    # the premises that differ from the other run: no TTA, no second round
    text = _markdown_outputs(outputs, "05_ensemble_submission")
    assert "no second round" in text and "The second round is kept" not in text
    assert "TTA 0" not in _html_outputs(outputs, "05_ensemble_submission")  # no TTA, no rows


def _markdown_outputs(outputs: Path, stage: str) -> str:
    """Every sentence a notebook printed (its Markdown outputs), as one text."""
    executed = nbformat.read(outputs / "notebooks" / f"{stage}.ipynb", as_version=4)
    return "\n".join(o["data"]["text/markdown"] for c in executed.cells if c.cell_type == "code"
                     for o in c.outputs if "text/markdown" in o.get("data", {}))  # fmt: skip


def _html_outputs(outputs: Path, stage: str) -> str:
    """Every table a notebook displayed (its HTML outputs), as one text."""
    executed = nbformat.read(outputs / "notebooks" / f"{stage}.ipynb", as_version=4)
    return "\n".join(o["data"]["text/html"] for c in executed.cells if c.cell_type == "code"
                     for o in c.outputs if "text/html" in o.get("data", {}))  # fmt: skip


# --------------------------------------------------------------------- the committed notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STAGES)
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]
    assert f'nb.start(\n    "{path.stem}"' in code[1].source or f'nb.start("{path.stem}"' in (
        code[1].source
    ), "the cell after the parameters checks them"
    assert not any("\ndef " in "\n" + c.source for c in code), "functions belong in digit_utils"
    assert nb.cells[-2].cell_type == "markdown" and "Summary" in nb.cells[-2].source


@pytest.mark.parametrize("stage", STAGES)
def test_declared_parameters_match_the_schema(stage):
    declared = pipeline.declared_parameters(REPO / "notebooks" / f"{stage}.ipynb")
    assert set(declared) == set(stages.STAGES[stage].schema)


def test_parameters_are_checked():
    good = {"data_dir": "", "tsne_samples": 10, "seed": 0}
    assert notebook.check_params("01_eda", good)["tsne_samples"] == 10
    with pytest.raises(ConfigError, match="unknown parameter.*'tsne'"):
        notebook.check_params("01_eda", {**good, "tsne": 5})
    with pytest.raises(ConfigError, match="tsne_samples: expected int, got 'many'"):
        notebook.check_params("01_eda", {**good, "tsne_samples": "many"})
    with pytest.raises(ConfigError, match="seed: expected int, got True"):
        notebook.check_params("01_eda", {**good, "seed": True})
    with pytest.raises(ConfigError, match="missing parameter.*seed"):
        notebook.check_params("01_eda", {"data_dir": "", "tsne_samples": 1})
