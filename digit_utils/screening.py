"""Screening architectures by cost: a synchronous successive-halving schedule under a GPU budget.

Every architecture trains a short budget on one fold (rung 0); the better ones are promoted to
longer budgets (epochs × ``eta`` per rung) and, at the last rung, to 04_train_cnn's epochs on
all its folds, so 05 can combine them with 04's runs out of fold. Each rung keeps the top
``ceil(n / eta)`` by accuracy (ties to the simpler), plus every model *within noise of the
cut*: one the last model above the cut does not beat (McNemar, ``stats.ALPHA``) on the same
rows. Promotion goes in rank order and admits a model only while the budget can pay for it at
the next rung and still carry the cheapest promoted model to the last rung: a GPU budget caps
the schedule by promoting fewer, never by cutting a rung short.

Why not Optuna's SuccessiveHalvingPruner or Ray Tune's ASHAScheduler: both are asynchronous
(a trial is promoted when it reports, so the outcome depends on which run finished first),
they prune trials of a search space rather than rank a fixed list, and neither knows that runs
of different architectures cost 500× apart. Here every rung trains to the end before any
promotion (over our device pool), so the result depends on the accuracies alone.

Pure and torch-free: the costs come in as seconds (``pipeline/budget``'s T4 table), the
accuracies as per-row correctness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from digit_utils import stats
from digit_utils.errors import ConfigError


@dataclass(frozen=True)
class Rung:
    """One rung: every model promoted to it trains ``epochs`` on ``folds`` folds."""

    index: int
    epochs: int
    folds: int  # runs per model: 1 (fold 0 of the final split) before the last rung
    keep: int  # the models it aims at (rung 0: all); within-noise ties may add more

    @property
    def budget(self) -> int:
        """Epochs × folds: what one model trains at this rung."""
        return self.epochs * self.folds


def schedule(n_models: int, *, min_epochs: int, eta: int, epochs: int, n_folds: int) -> list[Rung]:
    """The rungs: epochs ``epochs / eta**j`` (rounded, at least ``min_epochs``) up to ``epochs``;
    one fold before the last rung, ``n_folds`` (a holdout when 0) at it; no more rungs than
    dividing ``n_models`` by ``eta`` takes to reach one model."""
    for name, value, low in (("min_epochs", min_epochs, 1), ("eta", eta, 2), ("epochs", epochs, 1),
                             ("models", n_models, 1)):  # fmt: skip
        if value < low:
            raise ConfigError(f"{name}: must be at least {low}, got {value}")
    levels = [epochs]  # longest first
    while (e := round(epochs / eta ** len(levels))) >= min_epochs and e < levels[-1]:
        levels.append(e)
    keeps = [n_models]
    while keeps[-1] > 1:
        keeps.append(math.ceil(keeps[-1] / eta))
    count = min(len(levels), len(keeps))
    last = max(n_folds, 1)
    return [
        Rung(r, levels[count - 1 - r], last if r == count - 1 else 1, keeps[r])
        for r in range(count)
    ]


def cost(rung: Rung, model: str, seconds: Mapping[str, float]) -> float:
    """GPU-seconds of ``model`` at ``rung`` (``seconds``: one epoch of one fold's run)."""
    return rung.budget * seconds[model]


def _carry(model: str, rungs: Sequence[Rung], seconds: Mapping[str, float]) -> float:
    return sum(cost(r, model, seconds) for r in rungs)


def first_rung_seconds(models, rungs, seconds) -> float:
    """What rung 0 (every model) costs, plus carrying the cheapest through the other rungs."""
    return sum(cost(rungs[0], m, seconds) for m in models) + min(
        _carry(m, rungs[1:], seconds) for m in models
    )


def check_budget(models, rungs, seconds, max_seconds: float) -> None:
    """ConfigError when even rung 0 and one model to the end exceed ``max_seconds``."""
    need = first_rung_seconds(models, rungs, seconds)
    if need > max_seconds:
        raise ConfigError(
            f"max_gpu_hours: {max_seconds / 3600:.2f} T4 GPU-h cannot screen {len(models)} "
            f"models: rung 0 ({rungs[0].epochs} epoch(s) each) and one model to the last rung "
            f"need {need / 3600:.2f}; raise max_gpu_hours, or lower min_epochs, epochs or models"
        )


@dataclass(frozen=True)
class Promotion:
    promoted: list[str]  # in rank order
    stopped: dict[str, str]  # {model left behind: why, in words}
    capped: bool  # the budget kept out a model the rule would have promoted


def promote(
    ranked: Sequence[str],
    within_noise: set[str],
    keep: int,
    rungs_left: Sequence[Rung],
    seconds: Mapping[str, float],
    budget_left: float,
) -> Promotion:
    """Promote ``ranked`` (best first) to ``rungs_left[0]``: the top ``keep`` and those
    ``within_noise`` of the cut, each only while ``budget_left`` pays for the promoted at the
    next rung plus the cheapest of them to the last; at least one (the best affordable)."""
    nxt, later = rungs_left[0], rungs_left[1:]
    wanted = [m for i, m in enumerate(ranked) if i < keep or m in within_noise]

    def affordable(group: list[str]) -> bool:
        pay = sum(cost(nxt, m, seconds) for m in group)
        return pay + min(_carry(m, later, seconds) for m in group) <= budget_left * (1 + 1e-9)

    promoted: list[str] = []
    for m in wanted:
        if affordable([*promoted, m]):
            promoted.append(m)
    if not promoted:  # none the rule wants fits: the best that does (check_budget: one does)
        promoted = [next(m for m in ranked if affordable([m]))]
    stopped = {}
    for m in ranked:
        if m not in promoted:
            stopped[m] = "the budget" if m in wanted else "below the cut"
    return Promotion(promoted, stopped, any(v == "the budget" for v in stopped.values()))


def rank(correct: Mapping[str, np.ndarray], keep: int) -> tuple[list[str], set[str]]:
    """``(models best first, those below the cut within noise of it)``; ``correct`` per-row
    correctness on the same rows, given simplest first (ties in accuracy go to the simpler)."""
    names = list(correct)
    acc = {n: float(np.mean(correct[n])) for n in names}
    ranked = sorted(names, key=lambda n: (-acc[n], names.index(n)))
    if keep >= len(ranked):
        return ranked, set()
    cut = ranked[keep - 1]
    close = {n for n in ranked[keep:] if not stats.mcnemar(correct[cut], correct[n]).differ}
    return ranked, close


def worst_case(
    models: Sequence[str], rungs: Sequence[Rung], seconds: Mapping[str, float], max_seconds: float
) -> tuple[list[list[str]], bool]:
    """``(models at each rung, the budget promoted fewer than a rung's keep)`` when the dearest
    rank first and all tie: what the plan counts. The total never exceeds ``max_seconds``."""
    check_budget(models, rungs, seconds, max_seconds)
    at = [list(models)]
    spent = sum(cost(rungs[0], m, seconds) for m in models)
    capped = False
    for r in range(1, len(rungs)):
        dearest = sorted(at[-1], key=lambda m: (-seconds[m], m))  # any input order
        step = promote(dearest, set(dearest), rungs[r].keep, rungs[r:], seconds,
                       max_seconds - spent)  # fmt: skip
        capped |= len(step.promoted) < min(rungs[r].keep, len(dearest))
        spent += sum(cost(rungs[r], m, seconds) for m in step.promoted)
        at.append(step.promoted)
    return at, capped
