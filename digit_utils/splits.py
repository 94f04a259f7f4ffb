"""Which rows validate a run: a stratified holdout or one fold of a stratified k-fold.

Runs that are ensembled share ``split_seed``, hence their validation rows (the out-of-fold rows
the ensemble is scored on)."""

from __future__ import annotations

import numpy as np

from digit_utils.config import TrainConfig
from digit_utils.errors import ConfigError


def holdout_split(labels, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train_idx, val_idx), both sorted int64; val_fraction=0 -> no val."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels), dtype=np.int64)
    if val_fraction == 0:
        return idx, np.empty(0, np.int64)
    try:
        tr, va = train_test_split(
            idx, test_size=val_fraction, stratify=np.asarray(labels), random_state=seed
        )
    except ValueError as e:
        raise ConfigError(
            f"val_fraction={val_fraction}: cannot split these labels ({e})"
        ) from None
    return np.sort(tr), np.sort(va)


def kfold_splits(labels, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded k-fold (train_idx, val_idx) pairs; each val_idx sorted int64."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    idx = np.arange(len(labels), dtype=np.int64)
    try:
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(idx, labels)
        return [(np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64)) for tr, va in folds]
    except ValueError as e:
        raise ConfigError(f"n_folds={n_folds}: cannot split these labels ({e})") from None


def stratified_subset(labels, rows: int, seed: int = 0) -> np.ndarray:
    """Sorted int64 indices of ``rows`` labelled rows, stratified by label and seeded; every row
    when ``rows`` is 0 or at least their number. What a comparison trains on when its profile
    cannot afford every row (the same rows for every option it compares)."""
    labels = np.asarray(labels)
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 0:
        raise ConfigError(f"rows={rows!r}: expected 0 (every row) or a positive number of rows")
    if rows == 0 or rows >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes = len(np.unique(labels))
    if rows < 2 * classes:
        raise ConfigError(f"rows={rows}: too few to keep all {classes} classes (at least "
                          f"{2 * classes})")  # fmt: skip
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(
        np.arange(len(labels), dtype=np.int64), train_size=rows, stratify=labels,
        random_state=seed,
    )  # fmt: skip
    return np.sort(keep)


def split_for(cfg: TrainConfig, labels) -> tuple[np.ndarray, np.ndarray]:
    """The config's split: fold ``cfg.fold`` of a k-fold when set, else the holdout."""
    if cfg.fold is not None:
        return kfold_splits(labels, cfg.n_folds, cfg.split_seed)[cfg.fold]
    return holdout_split(labels, cfg.val_fraction, cfg.split_seed)


SPLIT_KEYS = ("fold", "n_folds", "split_seed", "val_fraction")  # what decides a run's val rows


def split_key(cfg) -> tuple:
    """The settings that decide a run's validation rows, from a config dict, as a tuple in
    SPLIT_KEYS order (a holdout ignores fold counts, a fold ignores the holdout fraction): two
    runs with equal keys held out the same rows."""
    if cfg.get("fold") is None:
        return (None, None, cfg.get("split_seed"), cfg.get("val_fraction"))
    return (cfg["fold"], cfg.get("n_folds"), cfg.get("split_seed"), None)


def describe(configs) -> str:
    """How a base model's runs were split, in words, from their ``config.json`` dicts:
    ``"5-fold, split_seed 0, fold(s) 0, 1, 2, 3, 4"`` or ``"holdout 10%, split_seed 0"``."""
    kinds: dict[str, list[int]] = {}  # how -> the folds of that k-fold among the runs
    for c in filter(None, configs):
        seed = c.get("split_seed")
        if c.get("fold") is not None:
            kinds.setdefault(f"{c.get('n_folds')}-fold, split_seed {seed}", []).append(c["fold"])
        elif c.get("val_fraction"):
            kinds.setdefault(f"holdout {c['val_fraction']:.0%}, split_seed {seed}", [])
        else:
            kinds.setdefault("no validation rows", [])
    if not kinds:
        return "split unknown: no config.json"
    return "; ".join(
        k + (f", fold(s) {', '.join(map(str, sorted(f)))}" if f else "") for k, f in kinds.items()
    )
