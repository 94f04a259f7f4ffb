"""The five real notebooks run as self-contained Kaggle kernels, chained as on Kaggle.

Each kernel is built (package inlined), then executed by papermill in an empty working folder
with KAGGLE_KERNEL_RUN_TYPE=Batch, mlxtend unimportable and an input tree laid out like Kaggle's:
the competition files plus only the outputs of the kernels named in its ``kernel_sources``. That
checks both self-containment and the upstream map in stages.STAGES.

Kaggle has mounted inputs two ways, and the stages alternate between them so that one chain
covers both: the competition at ``digit-recognizer/`` or ``competitions/digit-recognizer/``, and
an upstream kernel's output at ``<slug>/`` or ``notebooks/<owner>/<slug>/`` (subfolders kept).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_notebooks import STAGES, TINY

from conftest import REPO
from digit_utils import data, stages
from digit_utils.kaggle import kernels, local_run

TINY_KERNEL = {
    **TINY,
    "04_train_cnn": {**TINY["04_train_cnn"], "n_folds": 2, "seeds": 1},
    # the internet is off in a kernel: the notebook must say so, not fail on the network
    "05_ensemble_submission": {**TINY["05_ensemble_submission"], "submit": True},
}
# where each stage's inputs are mounted: (competition folder, upstream kernel folder)
FLAT = ("digit-recognizer", "{slug}")
NESTED = ("competitions/digit-recognizer", "notebooks/{owner}/{slug}")
LAYOUT = {"01_eda": NESTED, "02_augmentation": FLAT, "03_model_zoo": NESTED,
          "04_train_cnn": FLAT, "05_ensemble_submission": NESTED}  # fmt: skip


@pytest.fixture(scope="module")
def chain(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("kaggle")
    competition = data.copy_subset(
        data.DataSource(sample_dir, "sample"), root / "competition", 600, 200
    )
    (competition / data.SAMPLE_TEST_LABELS).unlink()  # the real competition has none
    working = {}
    for stage in STAGES:
        notebook = REPO / "notebooks" / f"{stage}.ipynb"
        meta = kernels.kernel_metadata(notebook, "alice")
        folder = kernels.build_kernel(notebook, "alice", dest=root / "built" / stage)
        inputs = root / "input" / stage
        competition_at, kernel_at = LAYOUT[stage]
        shutil.copytree(competition, inputs / competition_at)
        for source in meta["kernel_sources"]:
            upstream = next(s for s in working if source.endswith(kernels.kernel_slug(s)))
            owner, slug = source.split("/")
            # Kaggle mounts what the upstream kernel left in /kaggle/working: its output
            shutil.copytree(working[upstream], inputs / kernel_at.format(owner=owner, slug=slug))
        working[stage] = root / "working" / stage
        params = dict(TINY_KERNEL[stage])
        if "device" in stages.STAGES[stage].schema:
            params["device"] = "cpu"  # Kaggle's GPU is not here; the code path is the same
        local_run.run_kernel_locally(
            folder, inputs, working[stage], params, temp_dir=root / "temp" / stage
        )
    return working


@pytest.mark.parametrize("stage", STAGES)
def test_kernel_ran_self_contained(chain, stage):
    work = chain[stage]
    executed = work / "__notebook__.ipynb"
    assert executed.is_file()
    record = json.loads((work / "outputs" / stage / "metrics.json").read_text())
    assert record["data"]["origin"] == "kaggle-input"
    assert Path(record["data"]["path"]).as_posix().endswith(LAYOUT[stage][0])
    # its output is its outputs folder (and 05's submission), not the inlined package or caches
    top = {p.name for p in work.iterdir()}
    assert top <= {"__notebook__.ipynb", "outputs", "submission.csv"}, top
    assert not [p for p in work.rglob("*") if p.suffix in (".py", ".npz")]


def test_training_kernel_used_the_upstream_policy_and_folds(chain):
    m = json.loads((chain["04_train_cnn"] / "outputs/04_train_cnn/metrics.json").read_text())
    assert m["metrics"]["augmentation"].startswith("02_augmentation chose")
    assert m["metrics"]["model_origin"].startswith("03_model_zoo chose")
    assert m["metrics"]["oof_rows"] == 600  # 2 folds: every row out-of-fold once


def test_submission_kernel_wrote_kaggle_working_submission(chain):
    work = chain["05_ensemble_submission"]
    frame = pd.read_csv(work / "submission.csv")
    assert list(frame.columns) == ["ImageId", "Label"] and len(frame) == 200
    assert frame.equals(pd.read_csv(work / "outputs" / "submission.csv"))
    executed = (work / "__notebook__.ipynb").read_text()
    assert "not submitted: a Kaggle kernel runs with the internet off" in executed
