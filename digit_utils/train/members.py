"""The ensemble's members: 04_train_cnn's runs, plus the zoo's models that held out the same rows
and that 04's best run does not beat (read by 05_ensemble_submission), and 04's refits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digit_utils import stats
from digit_utils.errors import ConfigError, DigitsError
from digit_utils.paths import in_kaggle_kernel
from digit_utils.splits import split_key
from digit_utils.stages import REFIT_RUNS, TRAINED_RUNS, ZOO_RUNS
from digit_utils.train import inference, runs


def _splits(group: Sequence[Path]) -> set[tuple]:
    """How a member's runs split the rows: one (fold, n_folds, split_seed, holdout) per run."""

    return {split_key(runs.read_config(run) or {}) for run in group}


def _describe(splits: set[tuple]) -> str:
    fold, n_folds, split_seed, holdout = next(iter(splits))
    how = f"{n_folds} folds" if fold is not None else f"a {holdout:.0%} holdout"
    return f"{how}, split_seed {split_seed}"


def ensemble_members(
    runs_param: str = "auto", labels: np.ndarray | None = None
) -> tuple[dict[str, list[Path]], list[str]]:
    """The ensemble notebook's ``runs`` parameter resolved: ``({member: [run folders]}, notes)``.

    "auto": the runs 04_train_cnn recorded, plus each 03_model_zoo model whose runs held out
    exactly the same rows in the same folds and that 04's best run does not beat out of fold
    (McNemar on those rows, with ``labels``, train.csv's): another architecture at 04's level
    makes the ensemble diverse, while one 04's runs clearly beat would only dilute an average. A
    zoo model left out gets a note that says why; without the zoo's runs the members are 04's
    alone (inside a Kaggle kernel, an error). Anything else is a comma-separated list of run
    folders, used as given (the ensemble itself then refuses runs whose validation rows differ).
    """
    if runs_param != "auto":
        return runs.as_groups([p.strip() for p in runs_param.split(",") if p.strip()]), []
    members = runs.load_run_list(TRAINED_RUNS)
    try:
        zoo = runs.load_run_list(ZOO_RUNS)
    except DigitsError:
        if in_kaggle_kernel():  # the kernel declares 03 as a source: a broken chain, not a choice
            raise
        return members, ["03_model_zoo recorded no runs: the members are 04_train_cnn's only"]
    reference = _splits(next(iter(members.values())))
    same_rows = {name: group for name, group in zoo.items() if _splits(group) == reference}
    other_rows = [name for name in zoo if name not in same_rows]
    if same_rows and labels is None:
        raise ConfigError("runs='auto': the zoo's models are weighed on train.csv's labels")
    verdicts = _against_best(members, same_rows, labels) if same_rows else {}
    added = [name for name, (beaten, _) in verdicts.items() if not beaten]
    behind = [name for name, (beaten, _) in verdicts.items() if beaten]
    members.update({f"zoo-{name}": zoo[name] for name in added})
    quote = lambda names: ", ".join(f"`{n}`" for n in names)  # noqa: E731
    notes = []
    if added:
        notes.append(
            f"from 03_model_zoo, on the same folds as 04_train_cnn and not beaten by its best "
            f"run: {quote(added)}"
        )
    if behind:
        notes.append(
            "left out from 03_model_zoo: "
            + ", ".join(f"`{n}` ({verdicts[n][1]})" for n in behind)
            + ", which 04_train_cnn's best run beat out of fold (McNemar p < 0.05)"
        )
    if other_rows:
        notes.append(
            f"left out from 03_model_zoo: {quote(other_rows)}, which held out other rows "
            f"({_describe(_splits(zoo[other_rows[0]]))}, against 04_train_cnn's "
            f"{_describe(reference)}); members must be scored on the same rows, so give 03 "
            "the same n_folds to combine them"
        )
    return members, notes


def _against_best(
    trained: dict[str, list[Path]], zoo: dict[str, list[Path]], labels: np.ndarray
) -> dict[str, tuple[bool, str]]:
    """``{zoo model: (04's best run beats it, the figures in words)}`` on the shared out-of-fold
    rows; "best" is the 04 run with the most rows right."""
    oof = inference.load_oof({**trained, **{f"zoo-{n}": g for n, g in zoo.items()}})
    correct = {n: p.argmax(axis=1) == labels[oof.indices] for n, p in zip(oof.names, oof.probas,
                                                                       strict=True)}  # fmt: skip
    best = max(trained, key=lambda n: correct[n].sum())
    verdicts = {}
    for name in zoo:
        test = stats.mcnemar(correct[best], correct[f"zoo-{name}"])
        beaten = test.differ and test.only_a > test.only_b
        zoo_acc, best_acc = correct[f"zoo-{name}"].mean(), correct[best].mean()
        words = f"{zoo_acc:.2%} against `{best}`'s {best_acc:.2%}, {stats.p_value(test.p)}"
        verdicts[name] = (beaten, words)
    return verdicts


# a refit's config differs from its twin's only in how rows were split, its name and its device
_NOT_RECIPE = {"name", "device", "fold", "n_folds", "val_fraction", "split_seed"}


def _recipe(run: Path) -> dict:
    return {k: v for k, v in (runs.read_config(run) or {}).items() if k not in _NOT_RECIPE}


def refit_twins(
    refits: dict[str, Sequence[Path]], kfold: dict[str, Sequence[Path]]
) -> dict[str, str]:
    """``{refit: k-fold member}``: for each refit, the member trained with its very recipe
    (config.json equal but for the split, the name and the device: model, seed, epochs, …) on
    k folds, whose out-of-fold rows are the refit's estimate (:func:`grids.compare_refit`). A
    refit with no twin (runs given by hand, another seed) is left out."""
    recipes = {name: _recipe(group[0]) for name, group in kfold.items()
               if (runs.read_config(group[0]) or {}).get("fold") is not None}  # fmt: skip
    twins = {}
    for refit, (run, *_) in refits.items():
        mine = _recipe(run)
        if twin := next((name for name, recipe in recipes.items() if recipe == mine), None):
            twins[refit] = twin
    return twins


def twins_oof(refits: dict[str, Sequence[Path]], oof) -> np.ndarray | None:
    """The out-of-fold probabilities ``[R,N,10]`` of the refits' twins among ``oof``'s members
    (an :class:`ensemble.OutOfFold`), one per refit that has one; None when none has."""
    twins = refit_twins(refits, oof.runs)
    if not twins:
        return None
    return np.stack([oof.probas[oof.names.index(twin)] for twin in twins.values()])


def refit_members() -> dict[str, list[Path]]:
    """04_train_cnn's refits on every labelled row (``{name: [run folder]}``), or {} when it
    trained none (``refit=False``)."""

    try:
        return runs.load_run_list(REFIT_RUNS)
    except DigitsError:
        return {}
