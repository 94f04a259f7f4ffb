"""Experiment tracking with MLflow and TensorBoard: optional, off by default, no change to results.

The ``tracking`` setting (a TrainConfig field, shown by every training notebook) names the
trackers. A notebook's start opens an MLflow *parent* run (:func:`start_stage`) and its finish
closes it; each training run of its grid is a *child* run (:func:`start_run`, which
``loop.train`` calls at the start, at each epoch end and at the finish: never per batch).

- MLflow: a local SQLite store ``outputs/mlflow/mlflow.db`` with artifacts in
  ``outputs/mlflow/artifacts`` (MLflow's recommended local backend; nothing to start), unless
  ``MLFLOW_TRACKING_URI`` names another store, such as a team's server. One experiment per
  notebook (``digit-recognizer/<stage>``), one for a pipeline's notebooks
  (``digit-recognizer/pipeline``) and one for runs trained outside a notebook;
  ``MLFLOW_EXPERIMENT_NAME`` overrides them all.
- TensorBoard: a ``SummaryWriter`` per run in ``outputs/tensorboard/[<stage>/]<run>``.

A tracker that fails (server unreachable, disk full) warns once and is off for the rest of the
process; training and its run folder are never affected. A tracker whose package is missing (a
Kaggle kernel has no mlflow and no internet) is skipped with one line saying why. Neither
package, nor torch, is imported until a run asks for a tracker.

(Over 300 lines: two trackers for notebook and training runs, each call guarded, read best as one.)
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import math
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from digit_utils import __version__, paths
from digit_utils.config import TrainConfig, parse_trackers
from digit_utils.errors import TrackingWarning

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "digit-recognizer"
PROFILE_ENV = "DIGITS_PIPELINE_PROFILE"  # set by the pipeline for the notebooks it runs
PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
# the per-epoch figures, named as in history.csv
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")
FINAL_METRICS = ("best_val_acc", "final_val_acc", "val_acc_tta", "train_seconds", "params")

_failed: set[str] = set()  # trackers switched off by a failure in this process
_said: set[str] = set()  # one-line notices already given
_open: dict[str, Any] = {}  # MLflow run id -> client, for runs not yet ended
_parent: dict[str, Any] | None = None  # the open notebook run: {client, run_id, experiment, tags}


# --------------------------------------------------------------------------------------------
# Which trackers, guarded calls, the facts every run is tagged with


def usable(names: tuple[str, ...]) -> tuple[str, ...]:
    """The trackers of ``names`` that can log here: installed, and not failed earlier."""
    out = []
    for name in names:
        if name in _failed:
            continue
        if importlib.util.find_spec(PACKAGES[name]) is None:
            why = (
                "in this Kaggle kernel (its internet is off, so it cannot be installed)"
                if paths.in_kaggle_kernel()
                else "(pip install -e '.[tracking]')"
            )
            _notice(name, f"tracking: {PACKAGES[name]} is not installed {why}; not logging to "
                    f"{name}, the run folders have everything")  # fmt: skip
            continue
        out.append(name)
    return tuple(out)


def _notice(key: str, text: str) -> None:
    if key not in _said:
        _said.add(key)
        log.warning(text)


def _guarded(tracker: str, what: str, call: Callable, *args, **kwargs):
    """``call(...)``, or None when it fails: one warning, then the tracker is off."""
    if tracker in _failed:
        return None
    try:
        return call(*args, **kwargs)
    except Exception as e:  # any failure of a tracker must leave training alone
        _failed.add(tracker)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        warnings.warn(
            f"{tracker} tracking failed while {what} ({type(e).__name__}: {first}); it is off "
            "for the rest of this session, training and the run folders are unaffected",
            TrackingWarning,
            stacklevel=3,
        )
        return None


@functools.cache
def git_commit() -> str | None:
    """The project checkout's commit, when it is a git checkout with git installed."""
    try:
        done = subprocess.run(
            ["git", "-C", str(paths.project_root()), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _common_tags(stage: str | None) -> dict[str, str]:
    tags = {
        "version": __version__,
        "git_commit": git_commit(),
        "profile": os.environ.get(PROFILE_ENV),
        "stage": stage,
    }
    return {k: str(v) for k, v in tags.items() if v}


# --------------------------------------------------------------------------------------------
# MLflow: the store, experiments, runs


def local_store() -> Path:
    return paths.outputs_dir() / "mlflow"


def local_tracking_uri() -> str:
    """``sqlite:///<outputs>/mlflow/mlflow.db``: what ``mlflow ui --backend-store-uri`` takes."""
    return f"sqlite:///{local_store() / 'mlflow.db'}"


def experiment_name(stage: str | None) -> str:
    if name := os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return name
    if os.environ.get(PROFILE_ENV):
        return f"{EXPERIMENT_PREFIX}/pipeline"
    return f"{EXPERIMENT_PREFIX}/{stage or 'runs'}"


@functools.cache
def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _mlflow_run(stage: str | None, name: str, tags: dict, parent: str | None = None) -> tuple:
    """Create a run in the stage's experiment; ``(client, run_id, experiment_id)``."""
    # an unreachable server is retried for minutes by default; a few tries are plenty here
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        local_store().mkdir(parents=True, exist_ok=True)
    client = _client(uri or local_tracking_uri())
    exp_name = experiment_name(stage)
    exp = client.get_experiment_by_name(exp_name)
    if exp is not None:
        exp_id = exp.experiment_id
    else:  # a local store keeps artifacts beside the database, not in the notebook's cwd
        where = None if uri else (local_store() / "artifacts").as_uri()
        # the experiment kind makes MLflow's UI open on its training runs, not its GenAI pages
        kind = {"mlflow.experimentKind": "custom_model_development"}
        exp_id = client.create_experiment(exp_name, artifact_location=where, tags=kind)
    if parent:
        tags = {**tags, "mlflow.parentRunId": parent}
    run = client.create_run(exp_id, run_name=name, tags=tags)
    _open[run.info.run_id] = client
    return client, run.info.run_id, exp_id


def _end(client, run_id: str, status: str = "FINISHED") -> None:
    _open.pop(run_id, None)
    client.set_terminated(run_id, status)


@atexit.register
def _end_open_runs() -> None:
    """A notebook or training that raised never reached its finish: mark its runs failed."""
    for run_id, client in list(_open.items()):
        _guarded("mlflow", "ending an unfinished run", _end, client, run_id, "FAILED")


def _params(values: Mapping[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in values.items()]


def _metrics(values: Mapping[str, Any], step: int) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(k, float(v), now, step)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]


# --------------------------------------------------------------------------------------------
# A notebook's run (the parent)


class StageTracking:
    """The MLflow parent run of one notebook execution (inert when MLflow is not asked for)."""

    def __init__(self, stage: str, params: Mapping[str, Any], data: Mapping | None):
        global _parent
        self.stage, self.run = stage, None
        trackers = parse_trackers(str(params.get("tracking", "none")))
        if "mlflow" not in usable(trackers):
            return
        if _parent is not None:  # the notebook's first cell ran again: that run is over
            _guarded("mlflow", "ending the previous notebook run", _end,
                     _parent["client"], _parent["run_id"], "KILLED")  # fmt: skip
            _parent = None
        tags = _common_tags(stage)
        if data:
            tags["data_source"] = f"{data.get('origin')}: {data.get('path')}"
        self.run = _guarded("mlflow", "starting the notebook's run", _mlflow_run, stage,
                            f"{stage} {time.strftime('%Y-%m-%d %H:%M')}", tags)  # fmt: skip
        if self.run is None:
            return
        client, run_id, exp_id = self.run
        _guarded("mlflow", "logging parameters", client.log_batch, run_id,
                 params=_params(params))  # fmt: skip
        _parent = {"client": client, "run_id": run_id, "experiment": exp_id, "tags": tags}

    def finish(self, record: Mapping[str, Any], out: Path, writes: tuple[str, ...]) -> None:
        """Log the notebook's metrics, figures, metrics.json and hand-off files; end the run."""
        global _parent
        if self.run is None:
            return
        client, run_id, _ = self.run
        files = [out / "metrics.json", *(out / f for f in record.get("figures", ()))]
        files += [out / w for w in writes]
        for value in record.get("metrics", {}).values():  # 05's submission, with its provenance
            if isinstance(value, str) and value.endswith(".csv") and Path(value).is_file():
                files += [Path(value), Path(value).with_suffix(".json")]

        def log_all():
            fingerprint = record.get("data_fingerprint")
            if fingerprint:
                client.set_tag(run_id, "data_fingerprint", fingerprint)
            client.log_batch(run_id, metrics=_metrics(record.get("metrics", {}), 0))
            for f in files:
                if f.is_file():
                    folder = "figures" if f.suffix == ".png" else None
                    client.log_artifact(run_id, str(f), folder)
            _end(client, run_id)

        _guarded("mlflow", "finishing the notebook's run", log_all)
        if _parent is not None and _parent["run_id"] == run_id:
            _parent = None
        self.run = None


def start_stage(stage: str, params: Mapping[str, Any], data: Mapping | None) -> StageTracking:
    """Open the notebook's parent run when its ``tracking`` parameter asks for MLflow."""
    return StageTracking(stage, params, data)


# --------------------------------------------------------------------------------------------
# A training run (a child of the notebook's run, when there is one)


def tensorboard_dir(run_dir: Path) -> Path:
    """``outputs/tensorboard/[<stage>/]<run>``: the run folder's place, without the ``runs``."""
    outputs, run_dir = paths.outputs_dir(), Path(run_dir).resolve()
    parts = (run_dir.name,)
    if run_dir.is_relative_to(outputs):
        parts = tuple(p for p in run_dir.relative_to(outputs).parts if p != "runs")
    return outputs.joinpath("tensorboard", *parts)


class RunTracking:
    """One training run's trackers; every call is guarded and cheap (epoch ends only)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, facts: Mapping[str, Any], sample, epoch):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.mlflow = self.writer = None
        trackers = usable(cfg.trackers)
        if not trackers:
            return
        parent = _parent or {}
        tags = {**_common_tags(None), **parent.get("tags", {})}
        tags.update(
            {k: str(v) for k, v in facts.items()},
            model=cfg.model, seed=str(cfg.seed), fold=str(cfg.fold), run_dir=str(self.run_dir),
        )  # fmt: skip
        tags.setdefault("data_source", "arrays passed to loop.train")
        if "mlflow" in trackers:
            self.mlflow = _guarded("mlflow", "starting a training run", self._start_mlflow,
                                   tags, parent, epoch)  # fmt: skip
        if "tensorboard" in trackers:
            self.writer = _guarded("tensorboard", "starting a training run",
                                   self._start_tensorboard, tags, sample, epoch)  # fmt: skip

    def _start_mlflow(self, tags: dict, parent: Mapping, epoch: int) -> tuple:
        stage = parent.get("tags", {}).get("stage")
        if epoch > 0 and (found := self._unfinished(stage)):  # a resume goes on in its own run
            client, run_id = found
            client.update_run(run_id, status="RUNNING")
            _open[run_id] = client
            return client, run_id
        client, run_id, _ = _mlflow_run(stage, self.run_dir.name, tags, parent.get("run_id"))
        client.log_batch(run_id, params=_params(self.cfg.to_dict()))
        return client, run_id

    def _unfinished(self, stage: str | None) -> tuple | None:
        """The MLflow run an interrupted training of this run folder left, if any."""
        uri = os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment_name(stage))
        if exp is None or "'" in str(self.run_dir):
            return None
        found = client.search_runs(
            [exp.experiment_id], f"tags.run_dir = '{self.run_dir}'", max_results=1,
            order_by=["attributes.start_time DESC"],
        )  # fmt: skip
        if found and found[0].info.status != "FINISHED":
            return client, found[0].info.run_id
        return None

    def _start_tensorboard(self, tags: dict, sample, epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on a rerun or resume, TensorBoard hides the older events from here on
        writer = SummaryWriter(str(tensorboard_dir(self.run_dir)), purge_step=epoch + (epoch > 0))
        if epoch == 0:
            table = "\n".join(f"| {k} | {v} |" for k, v in {**self.cfg.to_dict(), **tags}.items())
            writer.add_text("config", "| setting | value |\n|---|---|\n" + table, 0)
            if sample is not None and len(sample):
                writer.add_image("augmentation", _gallery(sample, self.cfg), 0, dataformats="HW")
            writer.flush()
        return writer

    def epoch(self, row: Mapping[str, Any]) -> None:
        """Log one epoch's figures (a row of history.csv) with the epoch as the step."""
        step = int(row["epoch"])
        values = {k: row[k] for k in EPOCH_METRICS if k in row}
        if self.mlflow is not None:
            client, run_id = self.mlflow
            _guarded("mlflow", "logging an epoch", client.log_batch, run_id,
                     metrics=_metrics(values, step))  # fmt: skip
        if self.writer is not None:
            _guarded("tensorboard", "logging an epoch", self._tb_epoch, values, step)

    def _tb_epoch(self, values: Mapping[str, Any], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def finish(self, metrics: Mapping[str, Any]) -> None:
        """Log the headline figures and the run's files; end the run."""
        final = {k: metrics[k] for k in FINAL_METRICS if k in metrics}
        if self.mlflow is not None:
            _guarded("mlflow", "finishing a training run", self._mlflow_finish, final)
        if self.writer is not None:
            _guarded("tensorboard", "finishing a training run", self._tb_finish, final)
        self.mlflow = self.writer = None

    def _mlflow_finish(self, final: Mapping[str, Any]) -> None:
        from digit_utils.train import runs  # (imports torch, which train has loaded already)

        client, run_id = self.mlflow
        client.log_batch(run_id, metrics=_metrics(final, self.cfg.epochs))
        for name in (runs.CONFIG, runs.HISTORY, runs.METRICS):
            client.log_artifact(run_id, str(self.run_dir / name))
        if self.cfg.tracking_artifacts == "all":
            for name in (runs.BEST, runs.LAST, runs.VAL_INDICES, runs.VAL_PROBA):
                if (self.run_dir / name).is_file():
                    client.log_artifact(run_id, str(self.run_dir / name), "checkpoint")
        _end(client, run_id)

    def _tb_finish(self, final: Mapping[str, Any]) -> None:
        hparams = {
            k: v if isinstance(v, int | float | str | bool) else str(v)
            for k, v in self.cfg.to_dict().items()
        }
        clean = {f"hparam/{k}": float(v) for k, v in final.items() if not math.isnan(float(v))}
        self.writer.add_hparams(hparams, clean, run_name=".", global_step=self.cfg.epochs)
        self.writer.close()


def _gallery(sample, cfg: TrainConfig):
    """uint8 [H, W]: a few training digits (first column) under draws of the run's policy."""
    from digit_utils.train.augment import augmentation_gallery

    grid = augmentation_gallery(sample.cpu()[:6], cfg.policy, n_draws=8, seed=cfg.seed)
    n, d, h, w = grid.shape
    return grid.transpose(0, 2, 1, 3).reshape(n * h, d * w)


def start_run(
    cfg: TrainConfig, run_dir: Path, *, facts: Mapping[str, Any], sample=None, epoch: int = 0
) -> RunTracking:
    """The trackers of one training run (``cfg.tracking``); inert and free when it is "none".

    ``facts`` are tags (device, precision, data fingerprint); ``sample`` a few training digits
    for TensorBoard's augmentation gallery; ``epoch`` the epochs already done (a resume).
    """
    return RunTracking(cfg, run_dir, facts, sample, epoch)
