"""How sure a notebook may be: binomial intervals, McNemar's paired test and the difference it
can detect, a permutation test of two image sets, the simplest option within the noise, and the
sentences that state a decision (built from the numbers, never typed).

Every comparison here is paired: two classifiers scored on the *same* rows differ only where one
is right and the other wrong, and McNemar's exact test asks whether those discordant rows split
more unevenly than a fair coin would. Candidates come simplest first; the choice is the simplest
one that the best does not beat at ``alpha``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from digit_utils.errors import ConfigError

ALPHA = 0.05  # a difference with p below this is taken as real


def wilson(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound near 0% and 100%, unlike ± 2 se)."""
    if total <= 0:
        return float("nan"), float("nan")
    ci = binomtest(int(correct), int(total)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy(correct) -> dict:
    """``{"accuracy", "low", "high", "errors", "rows"}`` of a boolean vector, 95% Wilson."""
    correct = np.asarray(correct, dtype=bool)
    low, high = wilson(int(correct.sum()), len(correct))
    acc = float(correct.mean()) if len(correct) else float("nan")
    return {"accuracy": acc, "low": low, "high": high,
            "errors": int((~correct).sum()), "rows": len(correct)}  # fmt: skip


def score_interval(correct: int, total: int, rows: int, confidence: float = 0.95):
    """Where a predictor's score on ``rows`` unseen rows (a leaderboard's share of the test set)
    should land, 95%: ``correct`` of ``total`` scored rows estimate its accuracy, and both that
    estimate and the ``rows`` drawn add their binomial spread (a normal approximation around the
    estimate, clipped to [0, 1]). Fewer rows, a wider interval."""
    from scipy.stats import norm

    if total <= 0 or rows <= 0:
        raise ConfigError(f"score_interval: need scored rows and unseen rows, got {total}, {rows}")
    p = correct / total
    half = norm.ppf(0.5 + confidence / 2) * np.sqrt(p * (1 - p) * (1 / total + 1 / rows))
    return max(0.0, p - half), min(1.0, p + half)


def p_value(p: float) -> str:
    """``p = 0.03`` or ``p < 0.001`` (a p-value printed as 0.000 reads as impossible)."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


@dataclass(frozen=True)
class Paired:
    """McNemar's exact test of A against B on the same rows."""

    only_a: int  # rows A gets right and B wrong
    only_b: int  # rows B gets right and A wrong
    p: float  # two-sided; 1.0 when they never disagree

    @property
    def differ(self) -> bool:
        return self.p < ALPHA


def mcnemar(correct_a, correct_b) -> Paired:
    """Paired comparison of two classifiers' per-row correctness (boolean vectors, same rows)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"mcnemar: need two boolean vectors of one length: {a.shape} {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    if only_a + only_b == 0:
        return Paired(0, 0, 1.0)
    return Paired(only_a, only_b, float(binomtest(only_a, only_a + only_b).pvalue))


def detectable_difference(
    rows: int, discordant: float, *, alpha: float = ALPHA, power: float = 0.8
) -> float | None:
    """The smallest accuracy difference that McNemar's test on ``rows`` paired rows detects at
    ``alpha`` (two-sided) with probability ``power``, when the two classifiers disagree on a
    share ``discordant`` of the rows (normal approximation, Connor 1987):
    ``d * sqrt(n) = z_a * sqrt(p) + z_b * sqrt(p - d**2)``. None when no difference can reach
    that power (a difference cannot exceed the discordant share)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    if rows <= 0 or not 0 <= discordant <= 1:
        raise ConfigError(f"detectable_difference: need rows > 0 and a share, got {rows}, "
                          f"{discordant}")  # fmt: skip
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)

    def gap(d):  # the power equation; increasing in d, so its root is the smallest d
        return d * np.sqrt(rows) - z_a * np.sqrt(discordant) - z_b * np.sqrt(discordant - d * d)

    if discordant == 0 or gap(discordant) < 0:
        return None
    return float(brentq(gap, 0.0, discordant))


def power_note(only_a: int, only_b: int, rows: int) -> str:
    """What ``rows`` paired rows could have detected, given how often the two disagreed, and
    whether the observed difference is under it (then, and only then, too few rows to tell)."""
    if only_a + only_b == 0:
        return f" They make the same prediction on every one of the {rows:,} rows."
    gap, share = abs(only_a - only_b) / rows, (only_a + only_b) / rows
    least = detectable_difference(rows, share)
    if least is None:
        return (f" They disagree on only {only_a + only_b} of {rows:,} rows: no difference "
                "that few disagreements allow is detected by McNemar's test (5% level) with 80% "
                "power, so these rows are too few to tell them apart.")  # fmt: skip
    head = (f" With {rows:,} paired rows on which the two disagree {share:.2%} "
            f"of the time, McNemar's test (5% level, 80% power) detects accuracy differences of "
            f"{least * 100:.2f} points or more")  # fmt: skip
    if gap < least:
        return head + (f"; the observed {gap * 100:.2f} is under that: differences this small "
                       f"cannot be detected reliably with {rows:,} rows.")  # fmt: skip
    return head + f"; the observed {gap * 100:.2f} is not under that, yet this sample missed it."


@dataclass(frozen=True)
class Shift:
    """A permutation test of two image sets' mean images (see :func:`mean_image_shift`)."""

    observed: float  # the largest per-pixel gap between the two mean images, in grey levels
    null: np.ndarray  # the same gap over random re-splits of the pooled images, same sizes

    @property
    def p(self) -> float:
        """Share of re-splits (and the observed split) with a gap at least the observed one."""
        return float((1 + (self.null >= self.observed).sum()) / (1 + len(self.null)))

    @property
    def differ(self) -> bool:
        return self.p < ALPHA


def mean_image_shift(a: np.ndarray, b: np.ndarray, *, permutations: int = 99, seed: int = 0):
    """Is ``b``'s mean image further from ``a``'s than chance would put it? The statistic is the
    largest per-pixel gap between the two mean images; its null is that gap when the pooled
    images are split at random into parts of the same sizes (two samples of one distribution).
    One random split says little; ``permutations`` of them give the gap's spread and a p-value."""
    if len(a) == 0 or len(b) == 0 or permutations < 1:
        raise ConfigError(f"mean_image_shift: need images on both sides and permutations >= 1, "
                          f"got {len(a)}, {len(b)}, {permutations}")  # fmt: skip
    flat = np.concatenate([a.reshape(len(a), -1), b.reshape(len(b), -1)])
    total = flat.sum(axis=0, dtype=np.int64)

    def gap(rows_b: np.ndarray) -> float:  # sums of one part; the other is the rest
        part = flat[rows_b].sum(axis=0, dtype=np.int64)
        return float(np.abs(part / len(b) - (total - part) / len(a)).max())

    rng = np.random.default_rng(seed)
    null = [gap(rng.choice(len(flat), len(b), replace=False)) for _ in range(permutations)]
    return Shift(gap(np.arange(len(a), len(flat))), np.array(null))


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`simplest_within_noise`: a table and the choice it supports."""

    table: pd.DataFrame  # one row per candidate, simplest first (see simplest_within_noise)
    chosen: str
    best: str
    what: str  # what is being chosen ("policy", "architecture", ...), for the sentences

    @property
    def ties(self) -> list[str]:
        """Candidates the best does not beat (the chosen one among them)."""
        return list(self.table.index[self.table["within_noise"]])

    def facts(self, rule: str, *, ties: bool = False) -> dict:
        """What a stage records beside its choice (02's policy.json, 03's choice.json)."""
        chosen = self.table.loc[self.chosen]
        facts = {"oof_accuracy": float(chosen["accuracy"]), "best": self.best}
        if ties:
            facts["ties"] = self.ties
        return {**facts, "rows": int(chosen["rows"]), "rule": rule}

    def verdict(self) -> str:
        """The decision in words, every figure taken from the table."""
        t, c, b = self.table, self.chosen, self.best
        rows = int(t.loc[b, "rows"])
        head = (
            f"**{self.what.capitalize()}: `{c}`.** The best score is `{b}`'s "
            f"{t.loc[b, 'accuracy']:.2%} (95% interval {t.loc[b, 'low']:.2%}–"
            f"{t.loc[b, 'high']:.2%}, {rows:,} rows)."
        )
        if c == b:
            simpler = list(t.index[: t.index.get_loc(b)])
            if len(t) == 1:
                return head + " It is the only candidate."
            if not simpler:
                return head + " It is also the simplest candidate, so it is chosen."
            tests = ", ".join(f"`{n}` {p_value(t.loc[n, 'p'])}" for n in simpler)
            return head + (
                f" It beats every simpler candidate beyond the noise (McNemar: {tests}), so the "
                "extra complexity is paid for."
            )
        # on paired rows the accuracy gap is the discordant counts' difference over the rows:
        # the same figure power_note prints, rounded the same way
        gap = abs(int(t.loc[c, "only_best"]) - int(t.loc[c, "only_self"])) / rows
        return (
            head
            + (
                f" `{c}` is {gap * 100:.2f} points behind ({int(t.loc[c, 'only_best'])} row(s) "
                f"only `{b}` gets right against {int(t.loc[c, 'only_self'])} the other way, "
                f"McNemar {p_value(t.loc[c, 'p'])}): within the noise, so the simpler `{c}` is "
                "chosen."
            )
            + power_note(int(t.loc[c, "only_best"]), int(t.loc[c, "only_self"]), rows)
        )


def simplest_within_noise(
    correct: Mapping[str, np.ndarray], *, what: str = "option", alpha: float = ALPHA
) -> Decision:
    """Choose among candidates given simplest first (``{name: per-row correctness}``, all on
    the same rows): the simplest one the most accurate does not beat at ``alpha`` (McNemar).

    Table columns: accuracy, low, high (95% Wilson), errors, rows, only_best / only_self (the
    discordant rows against the best), p, within_noise, chosen.
    """
    if not correct:
        raise ConfigError(f"{what}: no candidates to choose from")
    names = list(correct)
    scores = {n: float(np.mean(correct[n])) for n in names}
    best = max(names, key=lambda n: (scores[n], -names.index(n)))  # ties go to the simpler
    rows = []
    for name in names:
        test = mcnemar(correct[best], correct[name])
        rows.append({"name": name, **accuracy(correct[name]), "only_best": test.only_a,
                     "only_self": test.only_b, "p": test.p,
                     "within_noise": name == best or test.p >= alpha})  # fmt: skip
    table = pd.DataFrame(rows).set_index("name")
    chosen = next(n for n in names if table.loc[n, "within_noise"])
    table["chosen"] = table.index == chosen
    return Decision(table, chosen, best, what)


def correct_by(
    probas: np.ndarray, names: Sequence[str], labels, key: Callable[[str], str] = str
) -> dict[str, np.ndarray]:
    """Per-row correctness of base models (``probas [K,N,10]``), grouped by ``key(name)``.

    Seeds of one variant (``key`` maps ``affine-s1`` to ``affine``) are concatenated, so they
    are paired with the other variants' runs of the same seed on the same rows.
    """
    labels = np.asarray(labels)
    out: dict[str, list[np.ndarray]] = {}
    for name, p in zip(names, probas, strict=True):
        out.setdefault(key(name), []).append(p.argmax(axis=1) == labels)
    return {k: np.concatenate(v) for k, v in out.items()}


def smoothing_floor(label_smoothing: float, classes: int = 10) -> float:
    """The lowest training loss label smoothing allows: the entropy of the smoothed target."""
    eps = label_smoothing
    on, off = 1 - eps + eps / classes, eps / classes
    return float(-(on * np.log(on)) - (classes - 1) * (off * np.log(off) if off else 0.0))
