"""The run folder: the one module that writes and reads it.

(Over 300 lines: everything that knows the run folder's layout lives here; what a checkpoint
holds is :mod:`checkpoints`.)

A training run lives in ``<runs root>/<name>/`` (see :func:`paths.runs_dir` for where roots are):

    config.json      the TrainConfig, written before the first epoch
    last.pt          weights, EMA, optimizer, scaler, RNG states and history (resume from here)
    best.pt          the weights of the epoch with the best validation accuracy (inspection only)
    history.csv      one row per epoch
    val_indices.npy  int64 [n_val]: rows of the train set this run held out
    val_proba.npy    float32 [n_val, 10]: the final model's probabilities on them
    metrics.json     headline figures and provenance
    complete.json    written last, atomically: the run's files and their hashes

Inside a Kaggle kernel the folder is part of the kernel's output (at most 20 GB, downloaded and
mounted into every later stage), so it keeps only what readers need (``OUTPUT_FILES``): the
resumable last.pt and best.pt live in scratch space (:func:`resume_path`, :func:`best_path`) and
the folder's last.pt holds the final (EMA) weights only, in fp16 (a tenth of the resumable one).

and a row in ``runs.csv`` beside the folders (one row per run name; bookkeeping written after
the run is complete, rebuilt from the folders when damaged). A folder without
``complete.json``, or whose files no longer match it, is unfinished or mixed (a rerun killed
half-way beside an older run's results): every reader refuses it, saying to resume or rerun.

A stage hands its runs to the next as a run list (``{base model: [run folders]}``), also written
and read here.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils import atomic, paths, typed
from digit_utils.config import TrainConfig
from digit_utils.errors import CheckpointError, ConfigError, DigitsError

CONFIG, HISTORY, METRICS = "config.json", "history.csv", "metrics.json"
BEST, LAST = "best.pt", "last.pt"
VAL_INDICES, VAL_PROBA = "val_indices.npy", "val_proba.npy"
COMPLETE = "complete.json"
RESULTS = (METRICS, VAL_INDICES, VAL_PROBA)  # what a finished run adds to its checkpoints
RUN_FILES = (CONFIG, HISTORY, BEST, LAST, *RESULTS)
# What a run folder in a Kaggle kernel's output holds: everything a reader loads, no best.pt
OUTPUT_FILES = (CONFIG, HISTORY, LAST, *RESULTS, COMPLETE)
RUNS_TABLE = "runs.csv"
HISTORY_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
    "eval_seconds",
)  # fmt: skip


def default_run_dir(cfg: TrainConfig, resume: bool = False) -> Path:
    """``outputs/runs/<name>``; without a name ``<model>-seed<seed>[-fold<k>]-<timestamp>``."""
    if cfg.name is not None:
        return paths.runs_dir() / cfg.name
    if resume:
        raise ConfigError("resume=True needs a run name (config 'name') or run_dir")
    fold = f"-fold{cfg.fold}" if cfg.fold is not None else ""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return paths.runs_dir() / f"{cfg.model}-seed{cfg.seed}{fold}-{stamp}"


# --------------------------------------------------------------------------------------------
# Complete or unfinished


def _kept_out(run_dir: Path, name: str) -> Path:
    """``run_dir/name``, except inside a Kaggle kernel, where /kaggle/working becomes the
    kernel's output (20 GB at most, mounted into every reader): there it is in scratch space."""
    run_dir = Path(run_dir)
    if not paths.in_kaggle_kernel():
        return run_dir / name
    key = hashlib.blake2b(str(run_dir.resolve()).encode(), digest_size=6).hexdigest()
    return paths.kaggle_temp_root() / "digit_utils-resume" / f"{run_dir.name}-{key}" / name


def resume_path(run_dir: Path) -> Path:
    """Where a run's resumable checkpoint lives: ``run_dir/last.pt``, in scratch space inside a
    Kaggle kernel (the optimizer's moments and the raw weights stay out of its output)."""
    return _kept_out(run_dir, LAST)


def best_path(run_dir: Path) -> Path:
    """Where a run's best.pt (inspection only; no reader loads it) is written: ``run_dir/best.pt``,
    in scratch space inside a Kaggle kernel."""
    return _kept_out(run_dir, BEST)


def start_fresh(run_dir: Path, *, keep_checkpoints: bool) -> None:
    """Before a run's first checkpoint: mark the folder unfinished and remove an earlier run's
    results (and, unless resuming, its checkpoints), so nothing old passes for this run's."""
    (run_dir / COMPLETE).unlink(missing_ok=True)  # first: from here on the folder is unfinished
    for name in RESULTS if keep_checkpoints else RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if not keep_checkpoints:
        resume_path(run_dir).unlink(missing_ok=True)
        best_path(run_dir).unlink(missing_ok=True)


def mark_complete(run_dir: Path) -> Path:
    """Write ``complete.json`` last: the names and hashes of the run's files."""
    files = {n: atomic.file_hash(run_dir / n) for n in RUN_FILES if (run_dir / n).is_file()}
    record = {"files": files, "finished": datetime.now().isoformat(timespec="seconds")}
    return atomic.write_json(record, run_dir / COMPLETE)


def check_complete(run_dir: str | Path, names=RUN_FILES) -> None:
    """CheckpointError unless the run finished and ``names`` are the files it finished with."""
    run_dir = Path(run_dir)
    try:
        recorded = json.loads((run_dir / COMPLETE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{run_dir}: unfinished run (no valid {COMPLETE}): it was interrupted or is still "
            "training; resume it (train(..., resume=True)) or rerun it"
        ) from None
    for name in names:
        path = run_dir / name
        if name in recorded and (not path.is_file() or atomic.file_hash(path) != recorded[name]):
            raise CheckpointError(
                f"{run_dir}: mixed run folder: {name} is not the file this run finished with "
                "(changed or left from another run); rerun it"
            )


# --------------------------------------------------------------------------------------------
# The other files of a run


def write_config(run_dir: Path, cfg: TrainConfig) -> Path:
    return atomic.write_json(cfg.to_dict(), run_dir / CONFIG)


def read_config(run_dir: str | Path) -> dict | None:
    """The run's ``config.json`` as a dict, or None when it has none (or not a readable one)."""
    try:
        return json.loads((Path(run_dir) / CONFIG).read_text())
    except (OSError, ValueError):
        return None


def read_metrics(run_dir: str | Path) -> dict:
    """A finished run's ``metrics.json`` (refused, like its checkpoints, when the folder is
    unfinished or mixed)."""
    check_complete(run_dir, [METRICS])
    path = Path(run_dir) / METRICS
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the run's metrics ({e})") from None
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path}: expected a JSON object of metrics")
    return metrics


def write_history(run_dir: Path, rows: list[dict]) -> Path:
    return atomic.write_csv(pd.DataFrame(rows), run_dir / HISTORY)


def write_validation(run_dir: Path, val_idx: np.ndarray, val_proba: np.ndarray) -> None:
    """The held-out rows and the final model's probabilities on them (out-of-fold data)."""
    idx, proba = val_idx.astype(np.int64), val_proba.astype(np.float32)
    atomic.atomic_write(run_dir / VAL_INDICES, lambda fh: np.save(fh, idx), mode="wb")
    atomic.atomic_write(run_dir / VAL_PROBA, lambda fh: np.save(fh, proba), mode="wb")


def read_validation(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(val_indices int64 [M], val_proba float32 [M,10])`` of a finished run."""
    run = Path(run)
    if any((run / n).is_file() for n in RUN_FILES):
        check_complete(run, [VAL_INDICES, VAL_PROBA])  # a run folder, but is it finished?
    files = [run / VAL_INDICES, run / VAL_PROBA]
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: missing; is {run} a finished training run?")
    idx, proba = np.load(files[0]), np.load(files[1])
    if idx.ndim != 1 or proba.shape != (len(idx), 10):
        raise CheckpointError(
            f"{run}: val_indices {idx.shape} and val_proba {proba.shape} do not match"
        )
    return idx.astype(np.int64), proba.astype(np.float32)


def validation_correct(run_dirs, labels) -> np.ndarray:
    """Per-row correctness of runs' saved validation probabilities, read from their files, each
    run's rows in index order, runs concatenated in the order given: two lists of runs on the
    same folds give paired vectors (what a notebook's check recomputes a decision from)."""
    out = []
    for run in run_dirs:
        idx, proba = read_validation(Path(run))
        order = np.argsort(idx, kind="stable")
        out.append(proba[order].argmax(axis=1) == np.asarray(labels)[idx[order]])
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def write_metrics(run_dir: Path, metrics: dict) -> Path:
    return atomic.write_json(metrics, run_dir / METRICS)


def _table_row(run_dir: Path, metrics: Mapping, config: Mapping) -> dict:
    return {
        **{k: metrics.get(k) for k in ("name", "model", "best_val_acc", "final_val_acc")},
        **{k: config.get(k) for k in ("seed", "fold", "epochs")},
        "train_seconds": metrics.get("train_seconds"),
        "device": metrics.get("device"),
        "run_dir": str(run_dir),
        "finished": metrics.get("finished"),
    }


def _rebuilt_table(root: Path) -> pd.DataFrame:
    """runs.csv as the finished run folders under ``root`` say it should be."""
    rows = []
    for folder in sorted(p for p in root.iterdir() if (p / COMPLETE).is_file()):
        try:
            metrics = json.loads((folder / METRICS).read_text())
            config = json.loads((folder / CONFIG).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict) and isinstance(config, dict):
            rows.append(_table_row(folder, metrics, config))
    return pd.DataFrame(rows)


def record_in_table(run_dir: Path, metrics: dict, cfg: TrainConfig) -> Path | None:
    """The run's row in runs.csv beside the run folders, after the run is complete: a damaged
    table is rebuilt from the folders, and one that cannot be written costs a warning, never
    the run."""
    table = run_dir.parent / RUNS_TABLE
    row = _table_row(run_dir, metrics, cfg.to_dict())
    try:
        frame = pd.read_csv(table) if table.exists() else pd.DataFrame()
        if len(frame) and "name" not in frame:
            raise ValueError("no 'name' column")
    except (OSError, ValueError, pd.errors.ParserError) as e:  # a folder, garbage, not UTF-8
        warnings.warn(
            f"{table}: damaged ({e.__class__.__name__}); rebuilt from the run folders",
            stacklevel=2,
        )
        frame = _rebuilt_table(run_dir.parent)
    if "name" in frame:  # one row per run name: a rerun replaces its row
        frame = frame[frame["name"] != row["name"]]
    try:
        return atomic.write_csv(pd.concat([frame, pd.DataFrame([row])], ignore_index=True), table)
    except OSError as e:
        warnings.warn(
            f"{table}: cannot write the runs table ({e.strerror or e}); the run in {run_dir} "
            "is complete, and `digits runs` lists it from the folders",
            stacklevel=2,
        )
        return None


def default_runs() -> list[Path]:
    """What to predict with when no run is named: the runs of the run list that the last stage
    in pipeline order recorded (05's submitted models, else 04's members, else 03's), else the
    newest finished run folder."""
    lists = sorted(paths.outputs_dir().glob(f"*/{paths.RUN_LIST}"), key=lambda p: p.parent.name)
    if lists:
        rel = lists[-1].relative_to(paths.outputs_dir()).as_posix()
        return [run for group in load_run_list(rel).values() for run in group]
    found = [p for root in paths.all_runs_dirs() for p in root.glob(f"*/{COMPLETE}")]
    if not found:
        raise DigitsError(
            f"no trained run in {paths.outputs_dir()}; train one first (make pipeline, or "
            "notebooks/04_train_cnn.ipynb) or pass --run RUN_DIR"
        )
    return [max(found, key=lambda p: p.stat().st_mtime).parent]


# --------------------------------------------------------------------------------------------
# Run lists: how a stage hands its runs to the next


def save_run_list(groups: dict[str, list[str | Path]], path: Path) -> Path:
    """Record ``{base model: [run folders]}`` (folds of one recipe form one base model).

    Paths are relative to the outputs folder (or, for runs an upstream Kaggle kernel made, to
    its mounted outputs) so that :func:`paths.upstream` resolves them anywhere.
    """
    listing = {name: [paths.outputs_relative(r) for r in runs] for name, runs in groups.items()}
    return atomic.write_json({"models": listing}, path)


def load_run_list(relative: str) -> dict[str, list[Path]]:
    """The ``{base model: [run folders]}`` a stage recorded, resolved locally or on Kaggle."""
    path = paths.upstream(relative)
    try:
        listing = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        listing, problem = None, f"not readable JSON ({e.__class__.__name__}: {e})"
    else:
        problem = _run_list_problem(listing)
    if problem:
        stage = relative.split("/", 1)[0]
        raise DigitsError(f"{path}: damaged run list: {problem}; rerun {stage} to rewrite it")
    return {name: [paths.upstream(r) for r in runs] for name, runs in listing["models"].items()}


def _run_list_problem(listing) -> str | None:
    """What is wrong with a run list's JSON (``{"models": {name: [folders]}}``), or None."""
    if problem := typed.json_problem(listing, {"models": dict}):
        return problem
    if "models" not in listing:
        return "it has no 'models'"
    for name, runs in listing["models"].items():
        if not (isinstance(runs, list) and all(isinstance(r, str) for r in runs)):
            return f"models.{name} must be a list of run folders, got {typed.shown(runs)}"
    return None


def as_groups(runs) -> dict[str, list[Path]]:
    """``{base model: [run folders]}`` from a run folder, a list of them (one base model each),
    or such a mapping already (several fold runs of one recipe form one base model)."""
    if isinstance(runs, str | Path):
        runs = [runs]
    if isinstance(runs, Mapping):
        groups = {
            str(k): [Path(p) for p in (v if isinstance(v, list | tuple) else [v])]
            for k, v in runs.items()
        }
    else:
        groups = {}
        for p in map(Path, runs):
            if p.name in groups:
                raise ConfigError(f"runs: two runs are named {p.name!r}; pass {{name: path}}")
            groups[p.name] = [p]
    if not groups or not all(groups.values()):
        raise ConfigError("runs: no run folders given")
    return groups


# --------------------------------------------------------------------------------------------
# Every finished run: the table `digits runs` prints


# The fields `digits runs` lists, and their types (None: may be null).
METRICS_SHAPE = {"model": str | None, "final_val_acc": float | None, "best_val_acc": float | None,
                 "epochs": int | None, "train_seconds": float | None, "device": str | None,
                 "finished": str | None}  # fmt: skip
CONFIG_SHAPE = {"model": str | None, "seed": int | None, "fold": int | None, "epochs": int | None}


def _listed(path: Path, shape: dict) -> dict:
    """A run's metrics.json or config.json for the listing; CheckpointError naming the file and
    field when it is damaged (written by hand, or by something else)."""
    try:
        found = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as e:
        problem = f"not readable JSON ({e.__class__.__name__}: {e})"
    else:
        if (problem := typed.json_problem(found, shape)) is None:
            return found
    raise CheckpointError(
        f"{path}: damaged run file: {problem}; retrain that run, or move its folder away"
    )


def finished_runs() -> pd.DataFrame:
    """One row per finished run folder (one with metrics.json) under every runs root, oldest
    first: name, stage, model, seed, fold, val_acc (the final model's), best_val_acc, epochs,
    train_seconds, device, finished (ISO time), run_dir. Read from the folders themselves, so a
    rerun shows once, as it is now."""
    rows = []
    for root in paths.all_runs_dirs():
        stage = None if root == paths.runs_dir() else root.parent.name
        for folder in sorted(p for p in root.iterdir() if (p / METRICS).is_file()):
            m, c = _listed(folder / METRICS, METRICS_SHAPE), _listed(folder / CONFIG, CONFIG_SHAPE)
            rows.append(
                {
                    "name": folder.name,
                    "stage": stage,
                    "model": m.get("model", c.get("model")),
                    "seed": c.get("seed"),
                    "fold": c.get("fold"),
                    "val_acc": m.get("final_val_acc"),
                    "best_val_acc": m.get("best_val_acc"),
                    "epochs": m.get("epochs", c.get("epochs")),
                    "train_seconds": m.get("train_seconds"),
                    "device": m.get("device"),
                    "finished": m.get("finished"),
                    "run_dir": str(folder),
                }
            )
    columns = ["name", "stage", "model", "seed", "fold", "val_acc", "best_val_acc", "epochs",
               "train_seconds", "device", "finished", "run_dir"]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("finished", kind="stable", na_position="first").reset_index(drop=True)
