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
    assert "`small`" in words and "too few to tell" in words and "0.30 points behind" in words


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


@pytest.mark.parametrize("rows, discordant", [(1000, 0.02), (42000, 0.01), (400, 0.05)])
def test_detectable_difference_inverts_connors_sample_size(rows, discordant):
    from scipy.stats import norm

    d = stats.detectable_difference(rows, discordant)
    z_a, z_b = norm.ppf(0.975), norm.ppf(0.8)
    n = (z_a * np.sqrt(discordant) + z_b * np.sqrt(discordant - d * d)) ** 2 / d**2
    assert n == pytest.approx(rows, rel=1e-6)
    assert 0 < d <= discordant
    assert stats.detectable_difference(4 * rows, discordant) < d  # more rows, finer


def test_detectable_difference_has_the_power_it_claims_by_simulation():
    """At the returned difference the exact McNemar test rejects about 80% of the time."""
    from scipy.stats import binomtest

    rows, disc = 3000, 0.04
    d = stats.detectable_difference(rows, disc)
    rng = np.random.default_rng(0)
    # each row: A only right (p10), B only right (p01), or they agree
    p10, p01 = (disc + d) / 2, (disc - d) / 2
    draws = rng.multinomial(rows, [p10, p01, 1 - disc], size=400)
    power = np.mean([binomtest(a, a + b).pvalue < 0.05 for a, b, _ in draws])
    assert 0.72 < power < 0.88
    half = stats.detectable_difference(rows, disc) / 2  # half the size: clearly under-powered
    draws = rng.multinomial(rows, [(disc + half) / 2, (disc - half) / 2, 1 - disc], size=400)
    assert np.mean([binomtest(a, a + b).pvalue < 0.05 for a, b, _ in draws]) < 0.5


def test_no_difference_is_detectable_with_too_few_disagreements():
    assert stats.detectable_difference(50, 0.02) is None  # one disagreement in 50 rows
    assert stats.detectable_difference(1000, 0.0) is None
    with pytest.raises(ConfigError, match="detectable_difference"):
        stats.detectable_difference(0, 0.1)


def test_the_power_note_says_too_few_rows_only_when_the_gap_is_under_the_detectable():
    under = stats.power_note(10, 4, 1000)  # gap 0.6 points, detectable about 1.05
    assert "1.05 points" in under and "cannot be detected reliably with 1,000 rows" in under
    assert "too few to tell them apart" in stats.power_note(1, 0, 50)
    above = stats.power_note(45, 20, 20000)  # 0.125 points against 0.113
    assert "not under that" in above and "cannot be detected" not in above
    # identical predictions: nothing to detect, and no "only 0 of N rows"
    same = stats.power_note(0, 0, 1000)
    assert "same prediction on every one of the 1,000 rows" in same and "only 0" not in same


def _digits_like(n: int, rng, ink: int = 0) -> np.ndarray:
    x = rng.integers(0, 256, size=(n, 1, 4, 4)).astype(np.uint8)
    x[:, 0, 0, 0] = np.clip(x[:, 0, 0, 0].astype(int) + ink, 0, 255)  # one pixel drawn darker
    return x


def test_mean_image_shift_finds_a_real_shift_and_no_shift_in_one_distribution():
    rng = np.random.default_rng(1)
    a, same, shifted = _digits_like(600, rng), _digits_like(300, rng), _digits_like(300, rng, 40)
    calm, moved = stats.mean_image_shift(a, same), stats.mean_image_shift(a, shifted)
    assert moved.p == pytest.approx(1 / 100) and moved.differ
    assert calm.p > 0.05 and not calm.differ
    direct = np.abs(a.mean(axis=0) - shifted.mean(axis=0)).max()
    assert moved.observed == pytest.approx(direct) and len(moved.null) == 99
    assert (moved.null < moved.observed).all()  # random parts never reach the real gap


def test_mean_image_shift_p_counts_the_resplits_at_least_as_far():
    shift = stats.Shift(2.0, np.array([1.0, 2.0, 3.0, 0.5]))
    assert shift.p == pytest.approx(3 / 5)  # the observed split, 2.0 and 3.0
    with pytest.raises(ConfigError, match="mean_image_shift"):
        stats.mean_image_shift(np.zeros((0, 1, 2, 2)), np.zeros((3, 1, 2, 2)))
