"""Intervals, the paired test and the choice rule the notebooks' verdicts are built from."""

from __future__ import annotations

import numpy as np
import pytest

from digit_utils import notebook, stats
from digit_utils.errors import ConfigError, VerdictError


def test_wilson_interval_brackets_the_proportion_and_stays_in_0_1():
    low, high = stats.wilson(396, 400)
    assert low < 0.99 < high and 0 < low and high < 1
    assert stats.wilson(400, 400)[1] == pytest.approx(1.0) and stats.wilson(400, 400)[0] < 1
    wide, narrow = stats.wilson(99, 100), stats.wilson(990, 1000)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]  # more rows, tighter interval


def test_mcnemar_counts_only_discordant_rows():
    a = np.array([1, 1, 1, 0, 1, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 1], bool)
    test = stats.mcnemar(a, b)
    assert (test.only_a, test.only_b) == (2, 1)
    assert test.p == pytest.approx(1.0) and not test.differ
    assert stats.mcnemar(a, a).p == 1.0
    lopsided = stats.mcnemar(np.r_[np.ones(20, bool), np.zeros(5, bool)], np.zeros(25, bool))
    assert lopsided.differ and lopsided.p < 1e-5  # 20 rows to 0: no coin does that
    with pytest.raises(ConfigError, match="one length"):
        stats.mcnemar(a, b[:3])


def _correct(n_wrong: int, rows: int = 1000, offset: int = 0) -> np.ndarray:
    c = np.ones(rows, bool)
    c[offset : offset + n_wrong] = False
    return c


def test_a_tie_goes_to_the_simplest_candidate():
    decision = stats.simplest_within_noise(
        {"small": _correct(12), "medium": _correct(10), "large": _correct(9)}, what="model"
    )
    assert decision.best == "large" and decision.chosen == "small"
    assert decision.ties == ["small", "medium", "large"]
    words = decision.verdict()
    assert "`small`" in words and "too few to tell" in words and "0.30% behind" in words


def test_a_real_gain_pays_for_complexity():
    decision = stats.simplest_within_noise(
        {"small": _correct(60), "large": _correct(10, offset=60)}, what="model"
    )
    assert decision.chosen == decision.best == "large"
    assert decision.table.loc["small", "p"] < stats.ALPHA and not decision.ties[:-1]
    assert "beats every simpler candidate" in decision.verdict()


def test_equal_scores_pick_the_simpler_as_best():
    decision = stats.simplest_within_noise({"a": _correct(5), "b": _correct(5, offset=5)})
    assert decision.best == decision.chosen == "a"


def test_correct_by_pools_seeds_of_one_variant():
    probas = np.zeros((3, 2, 10), np.float32)
    probas[:, :, 1] = 1
    probas[2, 0, 1], probas[2, 0, 2] = 0, 1  # the second seed of "x" misses row 0
    pooled = stats.correct_by(probas, ["x-s0", "y-s0", "x-s1"], [1, 1], key=lambda n: n[0])
    assert pooled["x"].tolist() == [True, True, False, True] and pooled["y"].all()


def test_smoothing_floor_is_the_entropy_of_the_smoothed_target():
    assert stats.smoothing_floor(0.0) == pytest.approx(0.0)
    target = np.full(10, 0.01)
    target[0] = 0.91
    assert stats.smoothing_floor(0.1) == pytest.approx(-(target * np.log(target)).sum())


def test_say_refuses_a_sentence_its_numbers_contradict():
    assert notebook.say("a beats b", a_ahead=True).data == "a beats b"
    with pytest.raises(VerdictError, match="a_ahead"):
        notebook.say("a beats b", a_ahead=0.97 > 0.98)


def test_a_leaderboard_score_interval_widens_with_fewer_rows_and_holds_its_coverage():
    public = stats.score_interval(9_960, 10_000, 7_000)  # 99.6% estimated on 10,000 rows
    private = stats.score_interval(9_960, 10_000, 21_000)
    assert public[0] < private[0] < 0.996 < private[1] < public[1] <= 1.0
    # coverage: draw the estimate's rows and the leaderboard's rows from one true accuracy
    rng = np.random.default_rng(0)
    est = rng.binomial(10_000, 0.996, 2_000)
    board = rng.binomial(7_000, 0.996, 2_000) / 7_000
    inside = [lo <= b <= hi for e, b in zip(est, board, strict=True)
              for lo, hi in [stats.score_interval(int(e), 10_000, 7_000)]]  # fmt: skip
    assert 0.92 <= np.mean(inside) <= 0.98
    with pytest.raises(ConfigError):
        stats.score_interval(1, 0, 7_000)
