"""Pseudo-labelling, honestly: test rows that a first-round ensemble is sure of join the training
rows of a second round, and the out-of-fold score stays a score on train.csv rows only.

Two leaks are closed by construction. A pseudo-labelled test row is passed to training as an
extra row (``train(..., extra_images=…)``), added after the split, so it never validates and no
out-of-fold row is a test row. And the teacher of a second-round run on fold f is the ensemble of
the first-round runs on fold f only: those never trained on fold f's validation rows, so their
pseudo-labels carry nothing about the rows the student is scored on. (A teacher trained on all
rows would pass its knowledge of those rows on through the test labels it writes.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils.config import TrainConfig
from digit_utils.errors import ConfigError
from digit_utils.gpu_cost import training_seconds
from digit_utils.splits import SPLIT_KEYS, split_key
from digit_utils.train import runs
from digit_utils.train.grids import Grid, run_grid
from digit_utils.train.inference import predict_runs
from digit_utils.train.parallel import train_all
from digit_utils.train.progress import bar


@dataclass(frozen=True)
class PseudoLabels:
    """Test rows a teacher is sure of, with the labels it gave them."""

    rows: np.ndarray  # int64 [M], rows of test.csv (0-based), ascending
    labels: np.ndarray  # int64 [M]
    confidence: np.ndarray  # float32 [M], the teacher's top probability
    threshold: float
    n_test: int

    def summary(self) -> dict:
        return {
            "threshold": self.threshold,
            "selected": len(self.rows),
            "test_rows": self.n_test,
            "fraction": len(self.rows) / max(1, self.n_test),
        }


def select(test_proba: np.ndarray, threshold: float) -> PseudoLabels:
    """The test rows whose top probability is at least ``threshold``, labelled by its argmax."""
    proba = np.asarray(test_proba, dtype=np.float32)
    if proba.ndim != 2 or proba.shape[1] != 10:
        raise ConfigError(f"test_proba: expected [N, 10], got {proba.shape}")
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold: {threshold} must be in (0, 1]")
    confidence = proba.max(axis=1)
    rows = np.flatnonzero(confidence >= threshold).astype(np.int64)
    return PseudoLabels(
        rows, proba[rows].argmax(1).astype(np.int64), confidence[rows], threshold, len(proba)
    )


def extra_rows(test_images: np.ndarray, pseudo: PseudoLabels) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 [M,1,28,28], int64 [M])``: the selected test images and their pseudo-labels."""
    if len(test_images) != pseudo.n_test:
        raise ConfigError(
            f"test_images: {len(test_images)} rows; the pseudo-labels are for {pseudo.n_test}"
        )
    return test_images[pseudo.rows], pseudo.labels


def teacher_proba(
    teachers: Mapping[str, Sequence[Path]],
    student: TrainConfig,
    test_images: np.ndarray,
    *,
    tta: int = 0,
    device: str | None = None,
) -> np.ndarray:
    """The averaged test probabilities of the first-round runs that held out exactly the
    student's validation rows (one run per base model); ConfigError when a base model has none.
    """
    wanted = split_key(student.to_dict())
    chosen = {}
    for name, group in runs.as_groups(teachers).items():
        match = [run for run in group if split_key(runs.read_config(run) or {}) == wanted]
        if not match:
            raise ConfigError(
                f"teachers: {name!r} has no run that held out the student's rows "
                f"({dict(zip(SPLIT_KEYS, wanted, strict=True))}); a teacher that trained on "
                "them would leak them into its pseudo-labels: train the first round on the "
                "same folds (n_folds, split_seed) or holdout"
            )
        chosen[name] = match[:1]
    return predict_runs(chosen, test_images, tta=tta, device=device).mean(axis=0)


class _FoldTeachers:
    """``extra(config)`` for a second-round run: the test rows (and pseudo-labels) that the
    teachers holding out the run's own rows are sure of, worked out once per split."""

    def __init__(self, teachers, test_images: np.ndarray, threshold: float, tta: int):
        self.teachers, self.test_images = teachers, test_images
        self.threshold, self.tta = threshold, tta
        self.cache: dict[tuple, PseudoLabels] = {}
        # one copy of the selected images per split: every run of the split shares it (all the
        # second round's jobs are made before the pool trains them)
        self.rows: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
        key = split_key(cfg.to_dict())
        if key not in self.cache:
            proba = teacher_proba(
                self.teachers, cfg, self.test_images, tta=self.tta, device=cfg.device
            )
            self.cache[key] = select(proba, self.threshold)
            self.rows[key] = extra_rows(self.test_images, self.cache[key])
        return self.rows[key]

    def selected(self) -> pd.DataFrame:
        """One row per split: its keys and the rows selected."""
        return pd.DataFrame(
            [
                {**dict(zip(SPLIT_KEYS, k, strict=True)), **p.summary()}
                for k, p in self.cache.items()
            ]
        )


def run_pseudo_grid(
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    base: TrainConfig,
    variants: Mapping[str, Mapping],
    teachers: Mapping[str, Sequence[Path]],
    *,
    threshold: float = 0.995,
    seeds: Sequence[int] = (0,),
    folds: int = 0,
    tta: int = 0,
    root: Path | None = None,
    quiet: bool = True,
    workers: int | str = "auto",
    threads: int | None = None,
) -> tuple[Grid, pd.DataFrame]:
    """A second round: :func:`grids.run_grid` where each run also trains on the test rows
    its fold's teacher is sure of. Returns the grid and one row per split: rows selected.
    """
    teachers_by_fold = _FoldTeachers(teachers, test_images, threshold, tta)
    grid = run_grid(
        images, labels, base, variants, seeds=seeds, folds=folds, root=root, quiet=quiet,
        workers=workers, threads=threads, extra=teachers_by_fold,
    )  # fmt: skip
    selected = teachers_by_fold.selected()
    return grid, selected


@dataclass(frozen=True)
class SecondRound:
    """Which members a second round retrains within ``max_gpu_hours`` (see :func:`plan_round`)."""

    table: pd.DataFrame  # per member, best first: model, runs, epochs, oof_accuracy, gpu_hours, …
    max_gpu_hours: float

    @property
    def chosen(self) -> list[str]:
        return list(self.table.index[self.table["retrain"]])

    def ensemble(self, first: Mapping[str, Sequence[Path]], students: Mapping[str, Sequence]):
        """The second round's members, in the first round's order: each retrained member's
        student (``name+pl``), and the first-round runs of the members left out."""
        return {f"{n}+pl" if f"{n}+pl" in students else n: list(students.get(f"{n}+pl", g))
                for n, g in first.items()}  # fmt: skip

    def sentence(self) -> str:
        """What the budget allowed, in words (every figure from the table)."""
        t, cap = self.table, self.max_gpu_hours
        spent = float(t.loc[t["retrain"], "gpu_hours"].sum())
        head = (
            f"The second round's estimated cost (T4 GPU-hours, the slow end of the estimate from "
            f"each architecture's FLOPs, counting every test row as a pseudo-label) is "
            f"{float(t['gpu_hours'].sum()):.2f} for all {len(t)} member(s); "
            f"`max_gpu_hours` is {cap:g}. "
        )
        if t["retrain"].all():
            return head + f"Every member is retrained ({spent:.2f} GPU-hours)."
        left = ", ".join(f"`{n}` ({h:.2f})" for n, h in t.loc[~t["retrain"], "gpu_hours"].items())
        if not t["retrain"].any():
            return head + f"No member fits ({left}): there is no second round."
        return head + (
            f"Best out-of-fold first, {len(self.chosen)} are retrained ({spent:.2f} GPU-hours); "
            f"left out, as they would pass the budget: {left}. Those keep their first-round runs."
        )


def plan_round(
    members: Mapping[str, Sequence[Path]],
    accuracy: Mapping[str, float],
    *,
    test_rows: int,
    max_gpu_hours: float,
) -> SecondRound:
    """The members a second round retrains: best out-of-fold ``accuracy`` first, each taken
    while the estimated T4 GPU-hours so far stay within ``max_gpu_hours`` (one that would pass
    it is skipped, and a cheaper one after it may still fit).

    A member's cost is the sum over its runs of :func:`gpu_cost.training_seconds` at the slow
    assumption, for its saved recipe (model, epochs, batch size) on its own training and
    validation rows plus ``test_rows`` (as if every test row were pseudo-labelled: the most a
    teacher can select) so the budget holds whatever the teachers pick.
    """
    if not max_gpu_hours > 0:
        raise ConfigError(f"max_gpu_hours: {max_gpu_hours} must be above 0")
    rows = []
    for name, group in runs.as_groups(members).items():
        cfg = runs.read_config(group[0]) or {}
        seconds = 0.0
        for run in group:
            m = runs.read_metrics(run)
            seconds += training_seconds(cfg["model"], int(cfg["epochs"]), m["n_train"] + test_rows,
                                        m["n_val"], int(cfg["batch_size"]))[1]  # fmt: skip
        rows.append({"member": name, "model": cfg["model"], "runs": len(group),
                     "epochs": int(cfg["epochs"]), "oof_accuracy": float(accuracy[name]),
                     "gpu_hours": seconds / 3600})  # fmt: skip
    table = pd.DataFrame(rows).set_index("member")
    table = table.sort_values("oof_accuracy", ascending=False, kind="stable")
    spent, keep = 0.0, []
    for hours in table["gpu_hours"]:
        keep.append(spent + hours <= max_gpu_hours)
        spent += hours if keep[-1] else 0.0
    return SecondRound(table.assign(retrain=keep), float(max_gpu_hours))


def retrain(
    members: Mapping[str, Sequence[Path]],
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    *,
    root: Path,
    threshold: float = 0.995,
    tta: int = 0,
    device: str | None = None,
    quiet: bool = True,
    workers: int | str = "auto",
    threads: int | None = None,
    only: Sequence[str] | None = None,
) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """The second round of an ensemble: every run of every member (of the members named in
    ``only``, e.g. :attr:`SecondRound.chosen`, when given) is trained again with its own recipe
    (its saved config, on its own fold) plus the test rows its fold's teachers, all the first
    round's runs on that fold, are sure of. ``device`` replaces the runs' own when given.

    Returns ``{member + "+pl": [run folders]}`` under ``root`` (one run per first-round run) and
    one row per split: the test rows selected. The teachers' pseudo-labels are worked out here
    (once per split); the runs then train at once over every visible GPU, each with its extra
    rows (``workers``, ``threads``: see :func:`parallel.train_all`).
    """
    groups = runs.as_groups(members)
    jobs = []
    for name, group in groups.items():
        if only is not None and name not in only:
            continue
        for run in group:
            saved = runs.read_config(run)
            if saved is None:
                raise ConfigError(f"runs: {run} has no config.json to retrain it from")
            cfg = TrainConfig.from_dict(saved)
            folder = f"{name}+pl" + (f"-f{cfg.fold}" if cfg.fold is not None else "")
            jobs.append(
                (f"{name}+pl", cfg.replace(name=folder, **({"device": device} if device else {})))
            )
    teachers_by_fold = _FoldTeachers(groups, test_images, threshold, tta)
    work = [(cfg, Path(root) / cfg.name, teachers_by_fold(cfg)) for _, cfg in jobs]
    with bar(total=len(work), desc="second round", unit="run", disable=quiet) as progress:
        results = train_all(work, images, labels, workers=workers, threads=threads,
                            done=lambda: progress.update(1))  # fmt: skip
    students: dict[str, list[str]] = {}
    for (student, _), result in zip(jobs, results, strict=True):
        students.setdefault(student, []).append(str(result.run_dir))
    return students, teachers_by_fold.selected()
