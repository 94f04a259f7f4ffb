"""The ensemble's members: 04_train_cnn's runs, plus the zoo's ties when they held out the same
rows (read by 05_ensemble_submission), and 04's refits on every row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from digit_utils.errors import DigitsError
from digit_utils.paths import in_kaggle_kernel
from digit_utils.splits import split_key
from digit_utils.stages import MODEL_CHOICE, REFIT_RUNS, TRAINED_RUNS, ZOO_RUNS, upstream_json
from digit_utils.train import runs


def _splits(group: Sequence[Path]) -> set[tuple]:
    """How a member's runs split the rows: one (fold, n_folds, split_seed, holdout) per run."""

    return {split_key(runs.read_config(run) or {}) for run in group}


def _describe(splits: set[tuple]) -> str:
    fold, n_folds, split_seed, holdout = next(iter(splits))
    how = f"{n_folds} folds" if fold is not None else f"a {holdout:.0%} holdout"
    return f"{how}, split_seed {split_seed}"


def ensemble_members(runs_param: str = "auto") -> tuple[dict[str, list[Path]], list[str]]:
    """The ensemble notebook's ``runs`` parameter resolved: ``({member: [run folders]}, notes)``.

    "auto": the runs 04_train_cnn recorded, plus each 03_model_zoo model whose runs held out
    exactly the same rows in the same folds and that the zoo could not tell from its best (its
    ``ties``): other architectures make the ensemble diverse, while one the best clearly beat
    would only dilute an average. A zoo model left out gets a note that says why; without the
    zoo's runs the members are 04's alone (inside a Kaggle kernel, an error). Anything else
    is a comma-separated list of run folders, used as given (the ensemble itself then refuses
    runs whose validation rows differ).
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
    choice = upstream_json(MODEL_CHOICE)  # its ties: the models it could not tell from its best
    ties = None if choice is None else set(choice.get("ties", []))
    reference = _splits(next(iter(members.values())))
    added, other_rows, behind = [], [], []
    for name, group in zoo.items():
        if _splits(group) != reference:
            other_rows.append(name)
        elif ties is not None and (runs.read_config(group[0]) or {}).get("model") not in ties:
            behind.append(name)
        else:
            members[f"zoo-{name}"] = group
            added.append(name)
    quote = lambda names: ", ".join(f"`{n}`" for n in names)  # noqa: E731
    notes = []
    if added:
        notes.append(f"from 03_model_zoo, on the same folds as 04_train_cnn: {quote(added)}")
    if behind:
        notes.append(
            f"left out from 03_model_zoo: {quote(behind)}, which the zoo's best beat (McNemar "
            "p < 0.05)"
        )
    if other_rows:
        notes.append(
            f"left out from 03_model_zoo: {quote(other_rows)}, which held out other rows "
            f"({_describe(_splits(zoo[other_rows[0]]))}, against 04_train_cnn's "
            f"{_describe(reference)}); members must be scored on the same rows, so give 03 "
            "the same n_folds to combine them"
        )
    return members, notes


def refit_members() -> dict[str, list[Path]]:
    """04_train_cnn's refits on every labelled row (``{name: [run folder]}``), or {} when it
    trained none (``refit=False``)."""

    try:
        return runs.load_run_list(REFIT_RUNS)
    except DigitsError:
        return {}
