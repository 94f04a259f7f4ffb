"""Combine trained runs: soft averaging, majority vote, a stacked super learner and greedy
forward selection, scored by CV.

(Over 300 lines: the four methods, their honest CV scores and the strict join of the members'
out-of-fold rows belong together.)

Every method takes the base models' probabilities stacked as ``float32 [K, N, 10]`` (K models, N
rows). Out-of-fold (OOF) rows are rows that no base model trained on (``inference.load_oof`` reads
them from the run folders); the methods are compared on them, the best one is then applied to the
test probabilities. Pure numpy and scikit-learn: no torch, no files.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils.errors import ConfigError

METHODS = ("average", "vote", "stack", "greedy")
EPS = 1e-6  # floor before log: a confident model's 0.0 must not become -inf


# --------------------------------------------------------------------------------------------
# Averaging, voting and stacking


def _check_stack(probas, name: str = "probas") -> np.ndarray:
    probas = np.asarray(probas, dtype=np.float32)
    if probas.ndim == 2:
        probas = probas[None]  # one model
    if probas.ndim != 3 or probas.shape[2] != 10 or probas.shape[0] == 0:
        raise ConfigError(f"{name}: expected probabilities [K, N, 10], got shape {probas.shape}")
    return probas


def soft_average(probas, weights: Sequence[float] | None = None) -> np.ndarray:
    """Mean of the models' probabilities (optionally weighted): ``[K,N,10] -> float32 [N,10]``."""
    probas = _check_stack(probas)
    if weights is None:
        return probas.mean(axis=0)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(probas),) or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"weights: need {len(probas)} non-negative weights, got {weights}")
    return np.tensordot(w / w.sum(), probas, axes=1).astype(np.float32)


def majority_vote(probas) -> np.ndarray:
    """Each model votes its argmax; ties go to the tied class with the larger summed probability.

    ``[K,N,10] -> int64 [N]``.
    """
    probas = _check_stack(probas)
    k, n, _ = probas.shape
    votes = np.zeros((n, 10), np.int64)
    np.add.at(votes, (np.arange(n)[None, :].repeat(k, 0), probas.argmax(axis=2)), 1)
    summed = probas.sum(axis=0)  # (N,10)
    tied_best = votes == votes.max(axis=1, keepdims=True)
    return np.where(tied_best, summed, -np.inf).argmax(axis=1).astype(np.int64)


def stack_features(probas) -> np.ndarray:
    """Meta-model input: the models' log-probabilities side by side, ``[K,N,10] -> [N, 10K]``."""
    probas = _check_stack(probas)
    return np.log(np.clip(probas, EPS, 1.0)).transpose(1, 0, 2).reshape(probas.shape[1], -1)


def default_meta_model():
    """Multinomial logistic regression: few parameters (10K x 10), hard to overfit 10K inputs."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000)


def _one_blas_thread():
    """The meta-model's matrices are tiny; with torch loaded, BLAS threads fighting torch's
    OpenMP threads made one fit 100x slower (22 s vs 0.2 s on a busy 2-core machine)."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    return threadpool_limits(1, user_api="blas")


class StackedEnsemble:
    """A scikit-learn meta-model fitted on out-of-fold probabilities of the base models."""

    def __init__(self, meta_model=None):
        self.meta_model = meta_model if meta_model is not None else default_meta_model()

    def fit(self, oof_probas, labels) -> StackedEnsemble:
        labels = np.asarray(labels, dtype=np.int64)
        features = stack_features(oof_probas)
        if len(labels) != len(features):
            raise ConfigError(f"labels: {len(labels)} labels for {len(features)} OOF rows")
        self.n_models = _check_stack(oof_probas).shape[0]
        with _one_blas_thread():
            self.meta_model.fit(features, labels)
        return self

    def predict_proba(self, probas) -> np.ndarray:
        """``[K,N,10] -> float32 [N,10]``, columns in digit order even if a digit was unseen."""
        probas = _check_stack(probas)
        if probas.shape[0] != getattr(self, "n_models", -1):
            raise ConfigError(f"probas: fitted on {self.n_models} models, got {probas.shape[0]}")
        with _one_blas_thread():
            p = self.meta_model.predict_proba(stack_features(probas))
        out = np.zeros((len(p), 10), np.float32)
        out[:, np.asarray(self.meta_model.classes_, dtype=np.int64)] = p
        return out


def _inner_folds(labels: np.ndarray, folds: int, method: str) -> int:
    """The inner CV's fold count: ``folds``, fewer on a tiny OOF set, ConfigError if none fit."""
    if folds < 2:
        raise ConfigError(f"folds: need at least 2 for the inner CV, got {folds}")
    largest = int(np.bincount(labels, minlength=10).max()) if len(labels) else 0
    if largest < 2:
        raise ConfigError(f"{method}: {len(labels)} OOF rows are too few for an inner CV")
    if largest < folds:  # a tiny run: StratifiedKFold needs folds <= the largest class
        warnings.warn(
            f"{method}: {len(labels)} OOF rows; inner CV uses {largest} folds, not {folds}",
            stacklevel=4,
        )
    return min(folds, largest)


def stacking_cv_proba(
    oof_probas, labels, *, folds: int = 5, seed: int = 0, meta_model=None
) -> np.ndarray:
    """Stacker predictions for every OOF row from a meta-model that never saw that row's fold.

    An inner stratified K-fold over the OOF rows: fit on K-1 folds, predict the held-out one.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    probas = _check_stack(oof_probas, "oof_probas")
    labels = np.asarray(labels, dtype=np.int64)
    folds = _inner_folds(labels, folds, "stack")
    template = meta_model if meta_model is not None else default_meta_model()
    out = np.zeros((probas.shape[1], 10), np.float32)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, eval_rows in splitter.split(np.zeros(len(labels)), labels):
        stacker = StackedEnsemble(clone(template)).fit(probas[:, fit_rows], labels[fit_rows])
        out[eval_rows] = stacker.predict_proba(probas[:, eval_rows])
    return out


# --------------------------------------------------------------------------------------------
# Greedy forward selection (Caruana et al. 2004)

GREEDY_METRICS = ("log_loss", "accuracy")


def _greedy_scores(total, probas, labels, metric: str) -> np.ndarray:
    """Per candidate k, the loss of the average ``(total + probas[k]) / m`` (lower is better).

    ``total`` [N,10] is the running sum of the chosen members; ties between candidates break on
    log-loss, so that accuracy (coarse on a few thousand rows) picks the surer of equal models.
    """
    rows = np.arange(len(labels))
    candidate = total[None] + probas  # (K,N,10): the sum after adding each candidate
    true = candidate[:, rows, labels] / candidate.sum(axis=2)  # (K,N) true-class probability
    log_loss = -np.log(np.clip(true, EPS, 1.0)).mean(axis=1)
    if metric == "log_loss":
        return log_loss
    errors = (candidate.argmax(axis=2) != labels).mean(axis=1)
    return errors + 1e-9 * log_loss / (1 + log_loss)  # tie-break within one error's gap


def greedy_select(
    oof_probas, labels, *, metric: str = "accuracy", max_rounds: int = 50
) -> np.ndarray:
    """Caruana et al. (2004) forward selection with replacement; weights ``float64 [K]``, sum 1.

    Each round adds (again, possibly) the model whose addition gives the best average on the
    OOF rows; the weights are the counts of the best round seen, not of the last one. Round 1
    picks the best single model, so the selection is never worse on these rows than the best
    single model, and a model that improves no average is never picked. The default metric is
    the one methods are compared by (accuracy, ties broken by log-loss): selecting on log-loss
    can pick a better-calibrated but less accurate model first.
    """
    probas = _check_stack(oof_probas, "oof_probas").astype(np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (probas.shape[1],):
        raise ConfigError(f"labels: expected shape ({probas.shape[1]},), got {labels.shape}")
    if metric not in GREEDY_METRICS:
        raise ConfigError(f"metric: {metric!r} is not one of {', '.join(GREEDY_METRICS)}")
    if max_rounds < 1:
        raise ConfigError(f"max_rounds: need at least 1, got {max_rounds}")
    counts = np.zeros(len(probas), np.int64)
    total = np.zeros(probas.shape[1:])
    best_score, best_counts = np.inf, counts
    for _ in range(max_rounds):
        scores = _greedy_scores(total, probas, labels, metric)
        k = int(np.argmin(scores))  # the lowest index among exact ties: deterministic
        counts = counts.copy()
        counts[k] += 1
        total += probas[k]
        if scores[k] < best_score:  # strictly better only: ties keep the smaller ensemble
            best_score, best_counts = scores[k], counts
    return best_counts / best_counts.sum()


def greedy_cv_proba(
    oof_probas, labels, *, folds: int = 5, seed: int = 0, metric: str = "accuracy"
) -> np.ndarray:
    """Greedy-weighted probabilities for every OOF row from weights chosen on the other folds.

    The selection is fitted on these rows, so scoring it on them would flatter it (as it would a
    stacker): an inner stratified K-fold gives its honest figure.
    """
    from sklearn.model_selection import StratifiedKFold

    probas = _check_stack(oof_probas, "oof_probas")
    labels = np.asarray(labels, dtype=np.int64)
    folds = _inner_folds(labels, folds, "greedy")
    out = np.zeros((probas.shape[1], 10), np.float32)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, eval_rows in splitter.split(np.zeros(len(labels)), labels):
        weights = greedy_select(probas[:, fit_rows], labels[fit_rows], metric=metric)
        out[eval_rows] = soft_average(probas[:, eval_rows], weights)
    return out


# --------------------------------------------------------------------------------------------
# Comparing the methods by CV, and applying the chosen one


def compare_methods(
    oof_probas,
    labels,
    *,
    names: Sequence[str] | None = None,
    methods: Sequence[str] = METHODS,
    folds: int = 5,
    seed: int = 0,
    meta_model=None,
) -> pd.DataFrame:
    """CV accuracy of each single model and each ensemble method on the OOF rows, best first.

    Columns: method, kind (single|ensemble), accuracy, errors, rows, best. Averaging and voting
    fit nothing, so their OOF accuracy is already a CV figure; stacking and greedy selection
    are scored by an inner K-fold. Ties prefer ensembles in the order of ``methods``, then
    single models.
    """
    probas = _check_stack(oof_probas, "oof_probas")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (probas.shape[1],):
        raise ConfigError(f"labels: expected shape ({probas.shape[1]},), got {labels.shape}")
    names = list(names) if names is not None else [f"model{i}" for i in range(len(probas))]
    if len(names) != len(probas):
        raise ConfigError(f"names: {len(names)} names for {len(probas)} models")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ConfigError(f"methods: unknown {sorted(unknown)}; known: {', '.join(METHODS)}")
    predictions = method_predictions(
        probas, labels, methods=methods, folds=folds, seed=seed, meta_model=meta_model
    )
    for name, p in zip(names, probas, strict=True):
        predictions[name] = p.argmax(axis=1)
    rows = [
        {
            "method": m,
            "kind": "ensemble" if m in METHODS else "single",
            "accuracy": float((pred == labels).mean()),
            "errors": int((pred != labels).sum()),
            "rows": len(labels),
        }
        for m, pred in predictions.items()
    ]
    table = pd.DataFrame(rows).sort_values("accuracy", ascending=False, kind="stable")
    table = table.reset_index(drop=True)
    table["best"] = table.index == 0
    return table


def method_predictions(
    probas,
    labels,
    *,
    methods: Sequence[str] = METHODS,
    folds: int = 5,
    seed: int = 0,
    meta_model=None,
) -> dict[str, np.ndarray]:
    """``{method: predicted labels on the OOF rows}``; stacking's and greedy selection's come
    from an inner K-fold (left out, with a warning, when the rows are too few for it)."""
    predictions = {}
    for method in methods:
        if method in ("stack", "greedy"):
            try:
                p = (
                    stacking_cv_proba(
                        probas, labels, folds=folds, seed=seed, meta_model=meta_model
                    )
                    if method == "stack"
                    else greedy_cv_proba(probas, labels, folds=folds, seed=seed)
                )
            except ConfigError as e:  # too few rows to score it: compare the others
                warnings.warn(f"{e}; {method} left out of the comparison", stacklevel=3)
                continue
            predictions[method] = p.argmax(axis=1)
        elif method == "vote":
            predictions[method] = majority_vote(probas)
        else:
            predictions[method] = soft_average(probas).argmax(axis=1)
    return predictions


def pick_best(table: pd.DataFrame, kind: str | None = None) -> tuple[str, float]:
    """The winning method of :func:`compare_methods` and its CV accuracy.

    ``kind="ensemble"`` picks among the ensembles only (when there are any): on a few hundred
    out-of-fold rows one model's lead of an error or two over the ensembles is noise, and choosing
    the luckiest seed would throw away the variance reduction that averaging gives for certain.
    """
    rows = (
        table if kind is None or not (table["kind"] == kind).any() else table[table.kind == kind]
    )
    row = rows.sort_values("accuracy", ascending=False, kind="stable").iloc[0]
    return str(row["method"]), float(row["accuracy"])


def combine(
    method: str,
    test_probas,
    *,
    oof_probas=None,
    oof_labels=None,
    names: Sequence[str] | None = None,
    meta_model=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a method (or one model, by name) to test probabilities: ``(labels, proba [N,10])``.

    ``"stack"`` fits the meta-model and ``"greedy"`` its weights on all OOF rows first. A vote
    has no probabilities of its own, so its ``proba`` is the soft average (for confidences),
    while ``labels`` is the vote.
    """
    probas = _check_stack(test_probas, "test_probas")
    if method == "average":
        proba = soft_average(probas)
    elif method == "vote":
        return majority_vote(probas), soft_average(probas)
    elif method in ("stack", "greedy"):
        if oof_probas is None or oof_labels is None:
            raise ConfigError(f"{method}: needs oof_probas and oof_labels to fit it")
        if method == "stack":
            proba = StackedEnsemble(meta_model).fit(oof_probas, oof_labels).predict_proba(probas)
        else:
            proba = soft_average(probas, greedy_select(oof_probas, oof_labels))
    elif names is not None and method in names:
        proba = probas[list(names).index(method)]
    else:
        raise ConfigError(f"method: unknown {method!r}; known: {', '.join(METHODS)} or a run name")
    return proba.argmax(axis=1).astype(np.int64), proba


# --------------------------------------------------------------------------------------------
# Loading runs


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold probabilities of K base models on the M rows all of them held out."""

    names: list[str]  # one per base model
    indices: np.ndarray  # int64 [M], rows of the full train set, ascending
    probas: np.ndarray  # float32 [K, M, 10]
    runs: dict[str, list[Path]]  # base model -> its run folders (several for k folds)


ROW_POLICIES = ("same", "intersect")


def out_of_fold(
    parts: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    runs=None,
    *,
    splits: Mapping[str, str] | None = None,
    rows: str = "same",
) -> OutOfFold:
    """Join each base model's validation parts; every base model must hold out the same rows.

    ``parts`` maps a base model's name to its runs' ``(val_indices, val_proba)``: one run, or
    several runs of one recipe on different folds, whose rows are joined (they must not
    overlap). ``rows="same"`` refuses base models whose rows differ (``splits`` says how each
    was split, for the message): models held out on different rows are scored on different
    questions, and quietly keeping the shared rows hides that. ``rows="intersect"`` keeps the
    rows every model held out (still rows no model trained on, but fewer of them).
    """
    if rows not in ROW_POLICIES:
        raise ConfigError(f"rows: {rows!r} is not one of {', '.join(ROW_POLICIES)}")
    per_model, fold_of = {}, {}
    for name, group in parts.items():
        idx = np.concatenate([i for i, _ in group])
        proba = np.concatenate([p for _, p in group])
        # each row labelled by the smallest row of its run's part: equal labels, equal folds
        fold = np.concatenate([np.full(len(i), i.min() if len(i) else -1) for i, _ in group])
        if len(np.unique(idx)) != len(idx):
            raise ConfigError(f"runs: the folds of {name!r} share validation rows")
        order = np.argsort(idx)
        per_model[name] = (idx[order], proba[order])
        fold_of[name] = fold[order]
    if rows == "same":
        _check_same_rows(per_model, fold_of, splits or {})
    common = None
    for idx, _ in per_model.values():
        common = idx if common is None else np.intersect1d(common, idx, assume_unique=True)
    if common is None or len(common) == 0:
        raise ConfigError(
            "runs: no validation row is shared by all base models; group k-fold runs of one "
            "recipe as {name: [fold runs]} or train them on the same holdout"
        )
    stacked = np.stack([proba[np.searchsorted(idx, common)] for idx, proba in per_model.values()])
    return OutOfFold(list(per_model), common.astype(np.int64), stacked, dict(runs or {}))


def _check_same_rows(per_model: Mapping, fold_of: Mapping, splits: Mapping[str, str]) -> None:
    """ConfigError naming the first base model whose validation rows (or their split into
    folds) differ from the first model's, and how each was split."""
    (first, (ref, _)), *others = per_model.items()
    for name, (idx, _) in others:
        same_rows = np.array_equal(idx, ref)
        if same_rows and np.array_equal(fold_of[name], fold_of[first]):
            continue
        a, b = (f"{m!r}" + (f" ({splits[m]})" if m in splits else "") for m in (first, name))
        if same_rows:
            how = f"{a} and {b} split the same {len(ref):,} rows into different folds"
        else:
            only_first = len(np.setdiff1d(ref, idx, assume_unique=True))
            only_this = len(np.setdiff1d(idx, ref, assume_unique=True))
            how = (
                f"{a} and {b} hold out different rows ({len(ref):,} vs {len(idx):,} rows; "
                f"{only_first:,} only in {first!r}, {only_this:,} only in {name!r})"
            )
        raise ConfigError(
            f"runs: {how}. An ensemble is chosen on rows none of its members trained on, and "
            "its members must have left out the same rows together: train them with the same "
            "split_seed and the same folds (or holdout fraction), or pass rows='intersect' to "
            "keep only the rows they all held out"
        )
