"""The judge's statistics, written once, so that a judge summary (`stats.py`) and an agreement report
(`agreement.py`) draw a confidence interval, take a majority, count a win rate and measure position bias the same
way. Pure functions on labels and numpy arrays: no Ray, no I/O.

Intervals are 95 % percentile bootstraps over items. Each call seeds a fresh `numpy.random.default_rng(seed)` and
draws resample after resample of n item indices (`rng.integers(0, n, n)`, in chunks of 256 rows, which gives the
same indices as drawing them one resample at a time), so a number is reproducible on its own, whatever else is
computed, and a statistic is evaluated on a whole chunk of resamples at once instead of one Python call each.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Hashable, Iterable, NamedTuple

import numpy as np

from sefl_ray.judge.ratings import CHOICES

CI_LEVEL = 0.95
_RESAMPLES_PER_CHUNK = 256  # 256 x n indices at a time: vectorised, yet bounded in memory for many items


class Bootstrap(NamedTuple):
    """How confidence intervals are drawn: `n` resamples (0: no intervals) from a generator seeded with `seed`."""

    n: int
    seed: int


def bootstrap_ci(statistic: Callable[[np.ndarray], Any], n_items: int,
                 bootstrap: Bootstrap) -> tuple[float | None, float | None, int]:
    """Percentile interval of `statistic` over `bootstrap.n` resamples of `n_items` item indices, and how many
    resamples it used. `statistic` takes a (resamples, n_items) index array and returns one value per row, NaN where
    it is undefined on that resample; those rows are skipped, and the interval is (None, None) when none is left."""
    if n_items == 0 or bootstrap.n == 0:
        return None, None, 0
    rng = np.random.default_rng(bootstrap.seed)
    values = []
    for start in range(0, bootstrap.n, _RESAMPLES_PER_CHUNK):
        resamples = rng.integers(0, n_items, size=(min(_RESAMPLES_PER_CHUNK, bootstrap.n - start), n_items))
        values.append(np.asarray(statistic(resamples), dtype=float))
    defined = np.concatenate(values)
    defined = defined[np.isfinite(defined)]
    if not defined.size:
        return None, None, 0
    tail = (100 - 100 * CI_LEVEL) / 2  # 2.5 exactly; (1 - CI_LEVEL) / 2 * 100 would be 2.500000000000002
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high), int(defined.size)


def mean_ci(values: np.ndarray, bootstrap: Bootstrap) -> tuple[float | None, float | None]:
    """`bootstrap_ci` of the mean of per-item `values` (a share, for 0/1 values): the interval callers need most."""
    low, high, _ = bootstrap_ci(lambda resamples: values[resamples].mean(axis=1), len(values), bootstrap)
    return low, high


def majority_vote(votes: Iterable[Hashable], *, strict: bool = False, split: Any = None) -> Any:
    """The most common vote, or `split` where there is none: no votes, two or more votes share the top count, or,
    with `strict`, the top has no more than half the votes (a plurality is not enough)."""
    counts = Counter(votes)
    ranked = counts.most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return split
    if strict and ranked[0][1] * 2 <= sum(counts.values()):
        return split
    return ranked[0][0]


def win_scores(winners: Iterable[str], first: str, second: str) -> np.ndarray:
    """Per verdict, `first`'s score against `second`: 1 a win, 0 a loss, 0.5 anything else (a tie is half a win)."""
    return np.array([1.0 if winner == first else 0.0 if winner == second else 0.5 for winner in winners])


def win_tally(winners: Iterable[str], first: str, second: str) -> dict[str, Any]:
    """How `first` (a) fared against `second` (b) over verdicts that each name a winner or a tie: `n`, `wins_a`,
    `wins_b`, `ties`, and each side's `win_rate_a`/`win_rate_b` with a tie as half a win (they sum to 1; None
    without verdicts)."""
    scores = win_scores(winners, first, second)
    n = len(scores)
    return {"n": n, "wins_a": int((scores == 1).sum()), "wins_b": int((scores == 0).sum()),
            "ties": int((scores == 0.5).sum()), "win_rate_a": float(scores.mean()) if n else None,
            "win_rate_b": float((1 - scores).mean()) if n else None}


def first_position(choices: Iterable[str]) -> dict[str, Any]:
    """Position bias of a rater from its choices as shown (`A`, `B`, `tie`): `picked_first`, for each non-tie
    choice in order, whether it is the first shown (`A`; in order, so that a bootstrap over it is reproducible);
    `n_ties`; and `rate`, the share of non-tie choices that are `A` (None when every choice is a tie)."""
    first, _, tie = CHOICES
    shown = list(choices)
    picked_first = [choice == first for choice in shown if choice != tie]
    return {"picked_first": picked_first, "n_ties": shown.count(tie), "rate": share(picked_first)}


def share(hits: Iterable[bool]) -> float | None:
    """The share of true `hits`; None without any, since a share of nothing is undefined, not 0."""
    hits = list(hits)
    return sum(map(bool, hits)) / len(hits) if hits else None
