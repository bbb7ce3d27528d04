"""The statistics core that the judge summary and the agreement report share: majorities on a split, a bootstrap
that a seed reproduces, win rates whose sides add up, and the first-position rate of a rater who always picks A."""

from __future__ import annotations

import numpy as np
import pytest

from sefl_ray.judge.statistics import (Bootstrap, bootstrap_ci, first_position, majority_vote, mean_ci, share,
                                       win_scores, win_tally)


def test_majority_is_the_split_value_on_a_tie_and_strict_needs_more_than_half():
    assert majority_vote(["base", "tuned", "tuned"]) == "tuned"
    assert majority_vote(["base", "tuned"], split="tie") == "tie"  # two share the top count
    assert majority_vote([0, 1, 1, 0]) is None
    assert majority_vote([]) is None
    plurality = ["base", "base", "tuned", "tie", "other"]  # 2 of 5: the most common, not more than half
    assert majority_vote(plurality, split="tie") == "base"
    assert majority_vote(plurality, strict=True, split="tie") == "tie"
    assert majority_vote(["base", "base", "tuned", "tie"], strict=True, split="tie") == "tie"  # half is not more
    assert majority_vote(["base", "base", "tuned"], strict=True, split="tie") == "base"
    assert majority_vote([2, 2, 0]) == 2  # a code 0 is a vote like any other, not "no majority"
    assert majority_vote([0, 0, 1]) == 0


def test_bootstrap_is_reproducible_by_seed_and_covers_the_point_estimate():
    values = np.random.default_rng(1).integers(1, 6, 40).astype(float)
    first = mean_ci(values, Bootstrap(500, seed=3))
    assert mean_ci(values, Bootstrap(500, seed=3)) == first
    assert mean_ci(values, Bootstrap(500, seed=4)) != first
    low, high = first
    assert low < values.mean() < high
    # the same indices as drawing one resample at a time with rng.integers(0, n, n), then the 2.5/97.5 percentiles
    rng = np.random.default_rng(3)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(500)]
    assert first == tuple(np.percentile(means, [2.5, 97.5]))


def test_bootstrap_skips_undefined_resamples_and_has_no_interval_without_items_or_resamples():
    values = np.array([0.0, 1.0, 1.0, 1.0])

    def undefined_without_a_zero(resamples):  # NaN on resamples that drew no 0: they are left out
        drawn = values[resamples]
        return np.where((drawn == 0).any(axis=1), drawn.mean(axis=1), np.nan)

    low, high, used = bootstrap_ci(undefined_without_a_zero, len(values), Bootstrap(300, seed=0))
    assert 0 < used < 300 and high < 1.0
    assert bootstrap_ci(undefined_without_a_zero, 0, Bootstrap(300, seed=0)) == (None, None, 0)
    assert bootstrap_ci(undefined_without_a_zero, len(values), Bootstrap(0, seed=0)) == (None, None, 0)


def test_win_tally_counts_ties_as_half_and_the_two_win_rates_sum_to_one():
    winners = ["tuned", "base", "tie", "tuned", "tuned", "tie", "base"]
    tally = win_tally(winners, "tuned", "base")
    assert (tally["n"], tally["wins_a"], tally["wins_b"], tally["ties"]) == (7, 3, 2, 2)
    assert tally["win_rate_a"] == pytest.approx(4 / 7) and tally["win_rate_b"] == pytest.approx(3 / 7)
    assert tally["win_rate_a"] + tally["win_rate_b"] == pytest.approx(1.0)
    assert win_tally(winners, "base", "tuned")["win_rate_a"] == tally["win_rate_b"]
    assert list(win_scores(winners[:3], "tuned", "base")) == [1.0, 0.0, 0.5]
    assert win_tally([], "tuned", "base")["win_rate_a"] is None


def test_first_position_rate_of_a_rater_who_always_picks_the_first_shown():
    always_first = first_position(["A"] * 9 + ["tie"])
    assert always_first["rate"] == 1.0 and always_first["n_ties"] == 1 and len(always_first["picked_first"]) == 9
    balanced = first_position(["A", "B", "B", "A", "tie", "tie"])
    assert balanced["rate"] == 0.5 and balanced["picked_first"] == [True, False, False, True]
    assert first_position(["tie", "tie"])["rate"] is None and share([]) is None
