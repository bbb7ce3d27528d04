"""Agreement statistics between raters: do the LLM judges agree with people as well as people agree with each
other, and are they biased towards the first position? `run_agreement` reads long-form ratings (see
`sefl_ray.judge.ratings` for the columns and checks) and writes `agreement.json`.

The statistics come from well-kept libraries: scikit-learn's `cohen_kappa_score` (unweighted for choices,
quadratic-weighted for scores), statsmodels' `fleiss_kappa`, and the `krippendorff` package's `alpha` (nominal for
choices, ordinal for scores). Only the bootstrap resamples of Cohen's kappa use a vectorized copy of scikit-learn's
formula on confusion-matrix counts, because a thousand library calls per rater pair take about a second each.

Shape of `agreement.json` (every statistic is computed per dimension; pairwise choices without a `dimension`
column, like scores without one, land in the dimension `overall`; SEFL's criteria are dimensions like any other):

    {
      "rating_type": "choice" | "score", "inputs": [path, ...], "n_ratings": int,
      "n_bootstrap": int, "seed": int, "ci_level": 0.95,
      "raters": [{"rater", "kind": "human" | "judge", "n_ratings"}, ...],      # humans first, then judges, by name
      "flags": [{"rater", "dimension", "flag": "low_agreement" | "inverted_or_broken", "cohen_kappa",
                 "message"}, ...],                                              # judges not to trust, every dimension
      "dimensions": {
        "<dimension>": {
          "n_items", "n_ratings", "categories": ["A", "B", "tie"] | [1, 2, ..., 5],
          "pairwise": [{"rater_a", "rater_b", "kind_a", "kind_b", "n", "cohen_kappa", "ci_low", "ci_high",
                        "percent_agreement", "n_resamples", "reason"}, ...],                # every pair of raters
          "fleiss_kappa": {"raters", "n", "value", "ci_low", "ci_high", "n_resamples", "reason"},
          "krippendorff_alpha": {"raters", "n", "n_values", "level", "value", "ci_low", "ci_high",
                                 "n_resamples", "reason"},
          "vs_human_majority": {"n_items", "excluded_tied", "excluded_single_human", "reason",
                                "raters": [{"rater", "n", "cohen_kappa", "ci_low", "ci_high", "accuracy",
                                            "accuracy_ci_low", "accuracy_ci_high", "n_resamples", "reason"}, ...]},
          "position_a_rate": [{"rater", "kind", "n_non_tie", "n_ties", "value", "reason"}, ...],  # choices only
          "win_rates": [{"rater", "kind", "systems": [s1, s2], "n", "ties",
                         "by_system": [{"system", "wins", "losses", "ties", "win_rate"}, ...]}, ...],  # choices only
          "calibration": {                                                                        # choices only
            "human_ceiling": {"value", "ci_low", "ci_high", "n", "reason",
                              "raters": [{"rater", "n", "agreement", "ci_low", "ci_high", "reason"}, ...]},
            "judges": [{"rater", "n", "loo_agreement", "ci_low", "ci_high", "reason", "vs_ceiling",
                        "cohen_kappa", "kappa_ci_low", "kappa_ci_high", "kappa_reason",    # vs the human majority
                        "unanimous": {"n", "accuracy", "ci_low", "ci_high", "reason"},
                        "split": {"n", "accuracy", "ci_low", "ci_high", "reason"},
                        "flag": null | "low_agreement" | "inverted_or_broken", "flag_message"}, ...],
            "bias": [{"rater", "kind", "first_position": {"n", "value", "ci_low", "ci_high", "reason"},
                      "prefers_longer": {"n", "value", "ci_low", "ci_high", "reason"}}, ...],  # every rater
            "by_system_pair": [{"systems": [s1, s2], "n_items", "human_ceiling", "human_ceiling_reason",
                                "judges": [{"rater", "n", "cohen_kappa", "ci_low", "ci_high", "accuracy",
                                            "reason"}, ...]}, ...]
          }
        }
      }
    }

Decisions:
- A statistic whose point estimate is undefined (no shared items, fewer than two human raters, or every rating in
  one category so that expected agreement is 1) is `null` with a `reason`; `reason` is `null` otherwise.
- Confidence intervals: 95 % percentile bootstrap over the items the statistic uses. For each statistic a fresh
  `numpy.random.default_rng(seed)` draws resample after resample of n item indices (`rng.integers(0, n, n)`), so
  a number is reproducible on its own, whatever else is computed. Resamples where the statistic is undefined are
  skipped; `n_resamples` counts the ones used, and the interval is `null` when none is left. The bootstrap, the
  majority, the win tally and the first-position rate are `sefl_ray.judge.statistics`', shared with the judge
  summary.
- Quadratic weights use the distance between scores: the categories are every whole number from the lowest to the
  highest score seen in the dimension, so a 1 vs 5 disagreement weighs 16 even if nobody gave a 3.
- Fleiss' kappa uses only items every human rated (it needs a full table) and is nominal even for scores;
  Krippendorff's alpha uses every item with at least two human ratings, missing ratings allowed.
- The human majority of an item is its most frequent human label (for scores too: the modal score), needing at
  least two human ratings. Items where two or more labels share the top count have no majority and are left out
  (`excluded_tied`), as are items with a single human rating (`excluded_single_human`). Judges are compared with
  it by Cohen's kappa (weighted as above) and accuracy (exact match), each with its own interval.
- Choices are compared as the raters saw them unless `system_a`/`system_b` show that raters saw an item's systems
  in different orders: then A and B are swapped back to the order of the item's first row before agreement, so
  `A` names the same system for everyone. `position_a_rate` (share of non-tie choices that are `A`) uses the
  positions as shown, since position bias is about what the rater saw, and only rows whose `order` is `shown`.
- Win rates map each choice back to its systems; `win_rate` counts a tie as half a win.

Calibration against humans (pairwise choices), following AlpacaEval's scoring of its annotators:
- Leave-one-out (LOO) agreement of a human h: the share of items h rated where h's choice equals the mode of the
  other humans' choices on that item, over the items where the other humans (one or more) have a unique mode. The
  human ceiling is the mean of that over the humans who have such items.
- A judge's LOO agreement: for each human h left out, the judge's agreement with the same mode of the humans other
  than h, on the same items (those h rated, where the others have a unique mode), averaged over h; so a judge's
  number and the ceiling are the same statistic. `vs_ceiling` = the judge's LOO agreement minus the ceiling. The CIs
  of the ceiling and of a judge resample the items any of its comparisons uses and average over h in each resample.
- Unanimous items: every human rating of the item (two or more) is the same choice. Split items: a human majority
  (as above) but not unanimous. A judge's accuracy on each is its exact match with the human majority.
- `first_position`: share of non-tie choices that are `A`, as shown, with a CI, counting only rows of `order`
  `shown`; a rater whose verdicts all combine both orders has none. `prefers_longer`: share of non-tie choices
  where the chosen feedback (as shown) is the longer one, from `length_a`/`length_b`; pairs of equal length are
  left out.
- `by_system_pair`: the ceiling and each judge's kappa (with CI) and accuracy against the human majority on the
  items of one pair of systems only.
- Flags (every dimension, scores too, from kappa against the human majority): below 0 is `inverted_or_broken`
  (the judge leans to the side the humans reject, or its verdicts are read the wrong way round); below 0.4 is
  `low_agreement`. A kappa that is undefined although the judge has items with a human majority (judge and majority
  gave one and the same category throughout) is `low_agreement` too: agreement beyond chance is not shown, and a
  judge is trusted only when it is. A judge with no such items is not calibrated at all and carries no flag.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sefl_ray.errors import ConfigError
from sefl_ray.durable import write_json
from sefl_ray.judge.ratings import CHOICES, Rating, aligned_choices, read_ratings
from sefl_ray.judge.statistics import (CI_LEVEL, Bootstrap, bootstrap_ci, first_position, majority_vote, mean_ci,
                                       share, win_tally)

logger = logging.getLogger(__name__)

KAPPA_FLAG = 0.4  # a judge below this kappa against the human majority is flagged
_NO_FIRST_POSITION = ("every verdict of this rater combines both presentation orders (order: both), so it has no "
                      "first position")


class Scale(NamedTuple):
    """The categories of one dimension and how disagreements between them weigh."""

    categories: list[Any]
    level: str  # "nominal" (choices) or "ordinal" (scores)

    @property
    def codes(self) -> dict[Any, int]:
        return {category: code for code, category in enumerate(self.categories)}

    @property
    def kappa_weights(self) -> str | None:
        return "quadratic" if self.level == "ordinal" else None


def run_agreement(paths: list[str | Path], out_dir: str | Path, *, n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """Agreement between every rater in `paths` (and of each judge with the human majority), written to
    `out_dir/agreement.json`; returns that path."""
    report = agreement_report(paths, n_bootstrap=n_bootstrap, seed=seed)
    out_path = Path(out_dir) / "agreement.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, report)
    logger.info("agreement of %d raters over %d ratings written to %s", len(report["raters"]), report["n_ratings"],
                out_path)
    return out_path


def agreement_report(paths: list[str | Path], *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The report `run_agreement` writes (the shape above), without writing it: the annotation study's admin view
    computes its live agreement with this same code."""
    if n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be 0 (no intervals) or more, got {n_bootstrap}")
    ratings, rating_type = read_ratings(list(paths))
    kinds = {rating.rater: rating.kind for rating in ratings}
    raters = sorted(kinds, key=lambda rater: (kinds[rater] != "human", rater))
    per_rater = Counter(rating.rater for rating in ratings)
    by_dimension: dict[str, list[Rating]] = defaultdict(list)
    for rating in ratings:
        by_dimension[rating.dimension].append(rating)
    bootstrap = Bootstrap(n_bootstrap, seed)
    dimensions = {dimension: _dimension_report(by_dimension[dimension], rating_type, raters, kinds, bootstrap)
                  for dimension in sorted(by_dimension)}
    flags = []
    for dimension, block in dimensions.items():
        for entry in block["vs_human_majority"]["raters"]:
            flag = _flag(entry["rater"], entry)
            if flag["flag"]:
                flags.append({"rater": entry["rater"], "dimension": dimension, **flag})
                logger.warning("agreement (%s): %s", dimension, flag["message"])
    report = {
        "rating_type": rating_type,
        "inputs": [str(path) for path in paths],
        "n_ratings": len(ratings),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "ci_level": CI_LEVEL,
        "raters": [{"rater": rater, "kind": kinds[rater], "n_ratings": per_rater[rater]} for rater in raters],
        "flags": flags,
        "dimensions": dimensions,
    }
    return report


def _dimension_report(ratings: list[Rating], rating_type: str, all_raters: list[str], kinds: dict[str, str],
                      bootstrap: Bootstrap) -> dict[str, Any]:
    if rating_type == "choice":
        scale = Scale(list(CHOICES), "nominal")
        aligned = aligned_choices(ratings)
        values = [(rating, aligned[(rating.dimension, rating.rater, rating.item)]) for rating in ratings]
    else:
        scores = [rating.value for rating in ratings]
        scale = Scale(list(range(min(scores), max(scores) + 1)), "ordinal")
        values = [(rating, rating.value) for rating in ratings]
    codes = scale.codes
    labels: dict[str, dict[str, int]] = defaultdict(dict)  # rater -> item -> category code
    for rating, value in values:
        labels[rating.rater][rating.item] = codes[value]
    raters = [rater for rater in all_raters if rater in labels]
    humans = [rater for rater in raters if kinds[rater] == "human"]
    judges = [rater for rater in raters if kinds[rater] == "judge"]
    report = {
        "n_items": len({rating.item for rating in ratings}),
        "n_ratings": len(ratings),
        "categories": scale.categories,
        "pairwise": [_pair_report(a, b, kinds, labels, scale, bootstrap) for a, b in combinations(raters, 2)],
        "fleiss_kappa": _fleiss_report(humans, labels, scale, bootstrap),
        "krippendorff_alpha": _krippendorff_report(humans, labels, scale, bootstrap),
        "vs_human_majority": _vs_majority_report(humans, judges, labels, scale, bootstrap),
    }
    if rating_type == "choice":
        report["position_a_rate"] = _position_report(ratings, raters, kinds)
        report["win_rates"] = _win_rate_report(ratings, raters, kinds)
        report["calibration"] = _calibration_report(ratings, humans, judges, kinds, labels, scale, bootstrap,
                                                    report["vs_human_majority"])
    return report


# ---- Cohen's kappa between two raters, and against the human majority ----

def _pair_report(rater_a: str, rater_b: str, kinds: dict[str, str], labels: dict[str, dict[str, int]], scale: Scale,
                 bootstrap: Bootstrap) -> dict[str, Any]:
    items = sorted(labels[rater_a].keys() & labels[rater_b].keys())
    codes_a = np.array([labels[rater_a][item] for item in items], dtype=np.int64)
    codes_b = np.array([labels[rater_b][item] for item in items], dtype=np.int64)
    kappa = _kappa_estimate(codes_a, codes_b, scale, bootstrap, no_items="the two raters share no rated item")
    return {"rater_a": rater_a, "rater_b": rater_b, "kind_a": kinds[rater_a], "kind_b": kinds[rater_b],
            "n": len(items), "cohen_kappa": kappa["value"], "ci_low": kappa["ci_low"], "ci_high": kappa["ci_high"],
            "percent_agreement": float(np.mean(codes_a == codes_b)) if items else None,
            "n_resamples": kappa["n_resamples"], "reason": kappa["reason"]}


def _vs_majority_report(humans: list[str], judges: list[str], labels: dict[str, dict[str, int]], scale: Scale,
                        bootstrap: Bootstrap) -> dict[str, Any]:
    majority, tied, single = _human_majority(humans, labels)
    reason = None if majority else (
        "fewer than two human raters" if len(humans) < 2 else "no item has a majority among two or more human ratings")
    entries = []
    for judge in judges:
        items = sorted(labels[judge].keys() & majority.keys())
        judged = np.array([labels[judge][item] for item in items], dtype=np.int64)
        truth = np.array([majority[item] for item in items], dtype=np.int64)
        kappa = _kappa_estimate(judged, truth, scale, bootstrap,
                                no_items="the judge rated no item that has a human majority")
        hits = judged == truth
        accuracy_low, accuracy_high = mean_ci(hits.astype(float), bootstrap)
        entries.append({"rater": judge, "n": len(items), "cohen_kappa": kappa["value"], "ci_low": kappa["ci_low"],
                        "ci_high": kappa["ci_high"], "accuracy": share(hits),
                        "accuracy_ci_low": accuracy_low, "accuracy_ci_high": accuracy_high,
                        "n_resamples": kappa["n_resamples"], "reason": kappa["reason"]})
    return {"n_items": len(majority), "excluded_tied": tied, "excluded_single_human": single, "reason": reason,
            "raters": entries}


def _human_majority(humans: list[str], labels: dict[str, dict[str, int]]) -> tuple[dict[str, int], int, int]:
    """Each item's most frequent human label, where at least two humans rated it and the top count is unique;
    also how many items were left out for a tie and for a single human rating."""
    by_item: dict[str, list[int]] = defaultdict(list)
    for human in humans:
        for item, code in labels[human].items():
            by_item[item].append(code)
    majority, tied, single = {}, 0, 0
    for item, codes in by_item.items():
        if len(codes) < 2:
            single += 1
        elif (top := majority_vote(codes)) is None:
            tied += 1
        else:
            majority[item] = top
    return majority, tied, single


def _kappa_estimate(codes_a: np.ndarray, codes_b: np.ndarray, scale: Scale, bootstrap: Bootstrap, *,
                    no_items: str) -> dict[str, Any]:
    if len(codes_a) == 0:
        return _estimate(None, None, None, 0, no_items)
    from sklearn.metrics import cohen_kappa_score

    n_categories = len(scale.categories)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns when kappa is undefined; we report why instead
        with np.errstate(divide="ignore", invalid="ignore"):  # older scikit-learn divides 0 by 0 into NaN
            value = cohen_kappa_score(codes_a, codes_b, labels=list(range(n_categories)),
                                      weights=scale.kappa_weights)
    low, high, used = bootstrap_ci(lambda resamples: _kappa_batch(codes_a, codes_b, scale, resamples),
                                   len(codes_a), bootstrap)
    return _estimate(value, low, high, used, "undefined: both raters gave one and the same category throughout "
                                             "(expected agreement is 1)")


def _kappa_batch(codes_a: np.ndarray, codes_b: np.ndarray, scale: Scale, resamples: np.ndarray) -> np.ndarray:
    """Cohen's kappa for each row of item indices in `resamples`, by scikit-learn's formula on the counts:
    1 - sum(w * observed) / sum(w * expected)."""
    k = len(scale.categories)
    n_resamples, n = resamples.shape
    cells = (codes_a * k + codes_b)[resamples] + (np.arange(n_resamples) * k * k)[:, None]
    observed = np.bincount(cells.ravel(), minlength=n_resamples * k * k).reshape(n_resamples, k, k).astype(float)
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / n
    distance = np.subtract.outer(np.arange(k), np.arange(k))
    weights = distance.astype(float) ** 2 if scale.kappa_weights == "quadratic" else (distance != 0).astype(float)
    disagreement = (weights * observed).sum(axis=(1, 2))
    chance = (weights * expected).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(chance > 0, 1 - disagreement / chance, np.nan)


# ---- Fleiss' kappa and Krippendorff's alpha over the human raters ----

def _fleiss_report(humans: list[str], labels: dict[str, dict[str, int]], scale: Scale,
                   bootstrap: Bootstrap) -> dict[str, Any]:
    items = sorted(set.intersection(*(set(labels[human]) for human in humans))) if len(humans) >= 2 else []
    if len(humans) < 2:
        estimate = _estimate(None, None, None, 0, "fewer than two human raters")
    elif not items:
        estimate = _estimate(None, None, None, 0, "no item was rated by every human rater")
    else:
        from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

        ratings = np.array([[labels[human][item] for human in humans] for item in items])
        table, _ = aggregate_raters(ratings, n_cat=len(scale.categories))

        def fleiss(rows: np.ndarray) -> float:
            with np.errstate(divide="ignore", invalid="ignore"):
                return float(fleiss_kappa(rows, method="fleiss"))

        low, high, used = bootstrap_ci(lambda resamples: [fleiss(table[rows]) for rows in resamples],
                                       len(items), bootstrap)
        estimate = _estimate(fleiss(table), low, high, used,
                             "undefined: every human gave the same category on every item (expected agreement is 1)")
    return {"raters": humans, "n": len(items), **estimate}


def _krippendorff_report(humans: list[str], labels: dict[str, dict[str, int]], scale: Scale,
                         bootstrap: Bootstrap) -> dict[str, Any]:
    counts = Counter(item for human in humans for item in labels[human])
    items = sorted(item for item, count in counts.items() if count >= 2)
    matrix = np.full((len(humans), len(items)), np.nan)
    for row, human in enumerate(humans):
        for column, item in enumerate(items):
            matrix[row, column] = labels[human].get(item, np.nan)
    n_values = int(np.isfinite(matrix).sum())
    if len(humans) < 2:
        estimate = _estimate(None, None, None, 0, "fewer than two human raters")
    elif not items:
        estimate = _estimate(None, None, None, 0, "no item was rated by two or more human raters")
    elif len(np.unique(matrix[np.isfinite(matrix)])) < 2:
        estimate = _estimate(None, None, None, 0, "undefined: every pairable human rating is the same category")
    else:
        import krippendorff

        domain = list(range(len(scale.categories)))

        def alpha(data: np.ndarray) -> float:
            with np.errstate(divide="ignore", invalid="ignore"):
                return float(krippendorff.alpha(reliability_data=data, value_domain=domain,
                                                level_of_measurement=scale.level))

        low, high, used = bootstrap_ci(lambda resamples: [alpha(matrix[:, columns]) for columns in resamples],
                                       len(items), bootstrap)
        estimate = _estimate(alpha(matrix), low, high, used, "undefined: no disagreement is expected by chance")
    return {"raters": humans, "n": len(items), "n_values": n_values, "level": scale.level, **estimate}


# ---- Position bias and win rates (pairwise choices) ----

def _position_report(ratings: list[Rating], raters: list[str], kinds: dict[str, str]) -> list[dict[str, Any]]:
    shown: dict[str, list[str]] = {rater: [] for rater in raters}
    for rating in ratings:
        if rating.order == "shown":
            shown[rating.rater].append(rating.value)
    entries = []
    for rater in raters:
        position = first_position(shown[rater])
        non_tie = len(position["picked_first"])
        reason = None if non_tie else _NO_FIRST_POSITION if not shown[rater] else "every choice of this rater is a tie"
        entries.append({"rater": rater, "kind": kinds[rater], "n_non_tie": non_tie, "n_ties": position["n_ties"],
                        "value": position["rate"], "reason": reason})
    return entries


def _win_rate_report(ratings: list[Rating], raters: list[str], kinds: dict[str, str]) -> list[dict[str, Any]]:
    winners: dict[tuple[str, tuple[str, str]], list[str]] = defaultdict(list)  # (rater, systems) -> winners
    for rating in ratings:
        if rating.systems is None:
            continue
        winner = {"A": rating.systems[0], "B": rating.systems[1], "tie": "tie"}[rating.value]
        winners[(rating.rater, tuple(sorted(rating.systems)))].append(winner)
    entries = []
    for rater in raters:
        for (tallied, systems), mine in sorted(winners.items()):
            if tallied != rater:
                continue
            tally = win_tally(mine, *systems)
            by_system = [{"system": system, "wins": tally[f"wins_{side}"], "losses": tally[f"wins_{other}"],
                          "ties": tally["ties"], "win_rate": tally[f"win_rate_{side}"]}
                         for system, side, other in ((systems[0], "a", "b"), (systems[1], "b", "a"))]
            entries.append({"rater": rater, "kind": kinds[rater], "systems": list(systems), "n": tally["n"],
                            "ties": tally["ties"], "by_system": by_system})
    return entries


# ---- Calibration against humans (pairwise choices) ----

def _calibration_report(ratings: list[Rating], humans: list[str], judges: list[str], kinds: dict[str, str],
                        labels: dict[str, dict[str, int]], scale: Scale, bootstrap: Bootstrap,
                        vs_majority: dict[str, Any]) -> dict[str, Any]:
    """The human ceiling, each judge against it and against the human majority, every rater's position and length
    bias, and the same per pair of systems."""
    ceiling = _ceiling_report(humans, labels, bootstrap)
    modes = _leave_one_out_modes(humans, labels)
    majority, _, _ = _human_majority(humans, labels)
    unanimous = {item for item in majority if len({labels[human][item] for human in humans if item in labels[human]})
                 == 1}
    kappas = {entry["rater"]: entry for entry in vs_majority["raters"]}
    judge_entries = [_judge_calibration(judge, humans, labels, modes, majority, unanimous, kappas[judge],
                                        ceiling["value"], bootstrap) for judge in judges]
    return {"human_ceiling": ceiling, "judges": judge_entries,
            "bias": [_bias_entry(rater, kinds[rater], ratings, bootstrap) for rater in humans + judges],
            "by_system_pair": _system_pair_report(ratings, humans, judges, labels, scale, bootstrap)}


def _ceiling_report(humans: list[str], labels: dict[str, dict[str, int]], bootstrap: Bootstrap) -> dict[str, Any]:
    """Each human's leave-one-out agreement with the other humans, and their mean: the human ceiling."""
    modes = _leave_one_out_modes(humans, labels)
    entries = []
    for human in humans:
        agreement = _loo_agreement([(labels[human], modes[human])], bootstrap)
        entries.append({"rater": human, "n": agreement["n"], "agreement": agreement["value"],
                        "ci_low": agreement["ci_low"], "ci_high": agreement["ci_high"],
                        "reason": None if agreement["n"] else "no item this human rated has a unique mode among the "
                                                              "other humans' ratings"})
    ceiling = _loo_agreement([(labels[human], modes[human]) for human in humans], bootstrap)
    reason = None if ceiling["n"] else ("fewer than two human raters" if len(humans) < 2 else
                                        "no item has a unique mode among the other humans' ratings")
    return {"value": ceiling["value"], "ci_low": ceiling["ci_low"], "ci_high": ceiling["ci_high"],
            "n": ceiling["n"], "reason": reason, "raters": entries}


def _judge_calibration(judge: str, humans: list[str], labels: dict[str, dict[str, int]],
                       modes: dict[str, dict[str, int]], majority: dict[str, int], unanimous: set[str],
                       kappa: dict[str, Any], ceiling: float | None, bootstrap: Bootstrap) -> dict[str, Any]:
    """A judge's LOO agreement (to set beside the ceiling), kappa against the human majority, its accuracy on
    unanimous and on split items, and its flag."""
    loo = _loo_agreement([(labels[judge], modes[human]) for human in humans], bootstrap)
    items = sorted(labels[judge].keys() & majority.keys())
    flag = _flag(judge, kappa)
    return {
        "rater": judge, "n": loo["n"], "loo_agreement": loo["value"], "ci_low": loo["ci_low"],
        "ci_high": loo["ci_high"], "reason": None if loo["n"] else "the judge rated no item that has a unique mode "
                                                                   "among the humans left after leaving one out",
        "vs_ceiling": loo["value"] - ceiling if loo["value"] is not None and ceiling is not None else None,
        "cohen_kappa": kappa["cohen_kappa"], "kappa_ci_low": kappa["ci_low"], "kappa_ci_high": kappa["ci_high"],
        "kappa_reason": kappa["reason"],
        "unanimous": _accuracy([labels[judge][item] == majority[item] for item in items if item in unanimous],
                               bootstrap, "the judge rated no item on which every human (two or more) agrees"),
        "split": _accuracy([labels[judge][item] == majority[item] for item in items if item not in unanimous],
                           bootstrap, "the judge rated no item with a human majority that is not unanimous"),
        "flag": flag["flag"], "flag_message": flag["message"],
    }


def _leave_one_out_modes(humans: list[str], labels: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """For each human h: {item h rated: the unique mode of the other humans' codes on it}, where there is one."""
    modes = {}
    for human in humans:
        others = [other for other in humans if other != human]
        modes[human] = {item: mode for item in labels[human]
                        if (mode := majority_vote(labels[other][item] for other in others if item in labels[other]))
                        is not None}
    return modes


def _loo_agreement(comparisons: list[tuple[dict[str, int], dict[str, int]]], bootstrap: Bootstrap) -> dict[str, Any]:
    """The mean over `comparisons` (one per human left out: the rater's codes, the others' modes) of the rater's
    exact-match share on the items both cover; comparisons without items are left out of the mean. The interval
    resamples the items any comparison uses."""
    items = sorted(set().union(*(codes.keys() & modes.keys() for codes, modes in comparisons)))
    if not items:
        return {"n": 0, "value": None, "ci_low": None, "ci_high": None}
    index = {item: column for column, item in enumerate(items)}
    covered = np.zeros((len(comparisons), len(items)))
    hits = np.zeros((len(comparisons), len(items)))
    for row, (codes, modes) in enumerate(comparisons):
        for item in codes.keys() & modes.keys():
            covered[row, index[item]] = 1.0
            hits[row, index[item]] = float(codes[item] == modes[item])

    def mean_agreement(resamples: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):  # a comparison none of whose items was drawn: NaN
            shares = hits[:, resamples].sum(axis=-1) / covered[:, resamples].sum(axis=-1)  # comparisons x resamples
        return np.nanmean(shares, axis=0)  # every item belongs to some comparison, so one is always defined

    value = float(mean_agreement(np.arange(len(items))[None, :])[0])
    low, high, _ = bootstrap_ci(mean_agreement, len(items), bootstrap)
    return {"n": len(items), "value": value, "ci_low": low, "ci_high": high}


def _accuracy(hits: list[bool], bootstrap: Bootstrap, no_items: str) -> dict[str, Any]:
    estimate = _share_estimate(hits, bootstrap, no_items)
    return {"n": estimate["n"], "accuracy": estimate["value"], "ci_low": estimate["ci_low"],
            "ci_high": estimate["ci_high"], "reason": estimate["reason"]}


def _share_estimate(hits: list[bool], bootstrap: Bootstrap, no_items: str) -> dict[str, Any]:
    """The share of true `hits`, with a bootstrap interval; null with `no_items` as the reason when empty."""
    if not hits:
        return {"n": 0, "value": None, "ci_low": None, "ci_high": None, "reason": no_items}
    low, high = mean_ci(np.array(hits, dtype=float), bootstrap)
    return {"n": len(hits), "value": share(hits), "ci_low": low, "ci_high": high, "reason": None}


def _bias_entry(rater: str, kind: str, ratings: list[Rating], bootstrap: Bootstrap) -> dict[str, Any]:
    """Position bias (share of first-shown choices) and length bias (share choosing the longer feedback)."""
    mine = [rating for rating in ratings if rating.rater == rater]
    shown = first_position(rating.value for rating in mine if rating.order == "shown")["picked_first"]
    no_first = "every choice of this rater is a tie" if any(r.order == "shown" for r in mine) else _NO_FIRST_POSITION
    with_lengths = [rating for rating in mine if rating.lengths is not None]
    longer = [(rating.value == "A") == (rating.lengths[0] > rating.lengths[1]) for rating in with_lengths
              if rating.value != "tie" and rating.lengths[0] != rating.lengths[1]]
    no_longer = ("no non-tie choice of this rater is between feedback of different lengths" if with_lengths else
                 "no length_a/length_b given for this rater's ratings")
    return {"rater": rater, "kind": kind, "first_position": _share_estimate(shown, bootstrap, no_first),
            "prefers_longer": _share_estimate(longer, bootstrap, no_longer)}


def _system_pair_report(ratings: list[Rating], humans: list[str], judges: list[str],
                        labels: dict[str, dict[str, int]], scale: Scale, bootstrap: Bootstrap) -> list[dict[str, Any]]:
    """The ceiling and each judge against the human majority on the items of one pair of systems at a time."""
    pair_items: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rating in ratings:
        if rating.systems is not None:
            pair_items[tuple(sorted(rating.systems))].add(rating.item)
    entries = []
    for systems, items in sorted(pair_items.items()):
        sliced = {rater: {item: code for item, code in codes.items() if item in items}
                  for rater, codes in labels.items()}
        ceiling = _ceiling_report(humans, sliced, Bootstrap(0, bootstrap.seed))
        majority = _vs_majority_report(humans, judges, sliced, scale, bootstrap)
        entries.append({"systems": list(systems), "n_items": len(items), "human_ceiling": ceiling["value"],
                        "human_ceiling_reason": ceiling["reason"],
                        "judges": [{key: entry[key] for key in ("rater", "n", "cohen_kappa", "ci_low", "ci_high",
                                                                "accuracy", "reason")}
                                   for entry in majority["raters"]]})
    return entries


def _flag(judge: str, kappa: dict[str, Any]) -> dict[str, Any]:
    """Whether a judge's kappa against the human majority (`kappa`: a `vs_human_majority` rater entry) says not to
    trust it, and what to tell the reader."""
    value = kappa["cohen_kappa"]
    if value is None and not kappa["n"]:
        return {"flag": None, "cohen_kappa": None, "message": None}
    if value is None:
        return {"flag": "low_agreement", "cohen_kappa": None,
                "message": f"{judge}: κ vs the human majority is undefined ({kappa['reason']}) on {kappa['n']} items: "
                           "agreement beyond chance is not shown"}
    if value < 0:
        return {"flag": "inverted_or_broken", "cohen_kappa": value,
                "message": f"{judge}: κ = {value:.2f} vs the human majority: inverted or broken (it leans to the side "
                           "the humans reject, or its verdicts are read the wrong way round)"}
    if value < KAPPA_FLAG:
        return {"flag": "low_agreement", "cohen_kappa": value,
                "message": f"{judge}: κ = {value:.2f} vs the human majority, below {KAPPA_FLAG}: low agreement; do "
                           "not trust its verdicts without human review"}
    return {"flag": None, "cohen_kappa": value, "message": None}


# ---- Reporting helpers ----

def _estimate(value: float | None, ci_low: float | None, ci_high: float | None, n_resamples: int,
              undefined_reason: str) -> dict[str, Any]:
    """A statistic for JSON: `null` and a reason where the point estimate is undefined, never NaN."""
    if value is None or not np.isfinite(value):
        return {"value": None, "ci_low": None, "ci_high": None, "n_resamples": n_resamples,
                "reason": undefined_reason}
    return {"value": float(value), "ci_low": ci_low, "ci_high": ci_high, "n_resamples": n_resamples,
            "reason": None}
