"""From judge calls to what a reader needs: who wins how often, how sure we are, and how far the judges can be
trusted (position consistency and bias, length dependence).

A pair judged in both orders counts as one verdict per (judge, item, criterion): the winner when both orders name
the same system (or both say tie), otherwise a tie, as position-inconsistent. With the `sefl` preset an item's
overall verdict is the majority of its criteria (a tie when they split evenly). The ensemble verdict is the
majority of the judges' verdicts per item (a tie without a majority). Win rates count a tie as half a win and carry
seeded 95 % percentile-bootstrap CIs over items (none for a single item). The length-controlled win rate follows
AlpacaEval's idea: a logistic regression of the outcome on the (tanh-scaled) difference in feedback length, read
off at zero difference, i.e. the win rate the first system would have if both wrote equally long feedback.

Majorities, win tallies, the first-position rate and the bootstrap are `sefl_ray.judge.statistics`', shared with
the agreement report, so both count them the same way.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from sefl_ray.judge.statistics import (
    Bootstrap, first_position, majority_vote, mean_ci, share, win_scores, win_tally,
)
from sefl_ray.usage import usage_of_rows

ENSEMBLE = "ensemble"


def summarize_judgments(
    judgments: list[dict[str, Any]], systems: dict[str, dict[str, dict[str, str]]], *, n_bootstrap: int, seed: int
) -> dict[str, Any]:
    ok = [row for row in judgments if row["status"] == "ok"]
    pairwise = [row for row in ok if row["kind"] == "pairwise"]
    verdicts = combine_orders(pairwise)
    per_item = overall_verdicts(verdicts)
    per_item.update(ensemble_verdicts(per_item))
    return {
        "calls": _call_counts(judgments),
        "usage": usage_of_rows(judgments).to_dict(),
        "position": position_stats(pairwise, verdicts),
        "win_rates": win_rates(per_item, systems, n_bootstrap=n_bootstrap, seed=seed),
        "criteria": criterion_win_rates(verdicts) if len({key[3] for key in verdicts}) > 1 else [],
        "rubric": rubric_means([row for row in ok if row["kind"] == "rubric"], n_bootstrap=n_bootstrap, seed=seed),
        "failures": Counter(row["error"].split(":")[0] for row in judgments if row["status"] != "ok").most_common(),
    }


def combine_orders(pairwise: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """{(judge, system_a, system_b, criterion, item): {"winner", "consistent"}} from the two orders."""
    by_key: dict[tuple, dict[str, str]] = defaultdict(dict)
    for row in pairwise:
        key = (row["judge"], row["system_a"], row["system_b"], row["criterion"], row["item_id"])
        by_key[key][row["order"]] = row["winner"]
    combined = {}
    for key, orders in by_key.items():
        if len(orders) < 2:
            continue  # one order failed: no verdict for this item rather than a one-sided one
        consistent = orders["AB"] == orders["BA"]
        combined[key] = {"winner": orders["AB"] if consistent else "tie", "consistent": consistent}
    return combined


def overall_verdicts(verdicts: dict[tuple, dict[str, Any]]) -> dict[tuple, str]:
    """{(judge, system_a, system_b, item): winner}, the majority over criteria (one criterion: itself)."""
    by_item: dict[tuple, list[str]] = defaultdict(list)
    for (judge, system_a, system_b, _, item), verdict in verdicts.items():
        by_item[(judge, system_a, system_b, item)].append(verdict["winner"])
    return {key: majority_vote(winners, split="tie") for key, winners in by_item.items()}


def ensemble_verdicts(per_item: dict[tuple, str]) -> dict[tuple, str]:
    judges = {key[0] for key in per_item}
    if len(judges) < 2:
        return {}
    by_item: dict[tuple, list[str]] = defaultdict(list)
    for (judge, system_a, system_b, item), winner in per_item.items():
        by_item[(system_a, system_b, item)].append(winner)
    return {(ENSEMBLE, *key): majority_vote(winners, strict=True, split="tie") for key, winners in by_item.items()}


def position_stats(pairwise: list[dict[str, Any]], verdicts: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per judge: how often both orders agree, and how often the first-shown feedback is chosen."""
    stats = []
    for judge in sorted({row["judge"] for row in pairwise}):
        shown = first_position(row["choice"] for row in pairwise if row["judge"] == judge)
        mine = [v for key, v in verdicts.items() if key[0] == judge]
        stats.append({
            "judge": judge,
            "verdicts": len(mine),
            "position_consistency": share(v["consistent"] for v in mine),
            "position_a_rate": shown["rate"],
            "tie_rate": share(v["winner"] == "tie" for v in mine),
        })
    return stats


def win_rates(
    per_item: dict[tuple, str], systems: dict[str, dict[str, dict[str, str]]], *, n_bootstrap: int, seed: int
) -> list[dict[str, Any]]:
    rows = []
    groups: dict[tuple, list[tuple[str, str]]] = defaultdict(list)
    for (judge, system_a, system_b, item), winner in per_item.items():
        groups[(judge, system_a, system_b)].append((item, winner))
    for (judge, system_a, system_b), verdicts in sorted(groups.items()):
        winners = [winner for _, winner in verdicts]
        outcome = win_scores(winners, system_a, system_b)
        tally = win_tally(winners, system_a, system_b)
        length_diff = np.array([len(systems[system_a][item]["feedback"]) - len(systems[system_b][item]["feedback"])
                                for item, _ in verdicts], dtype=float)
        low, high = _mean_ci(outcome, Bootstrap(n_bootstrap, seed))
        rows.append({
            "judge": judge, "system_a": system_a, "system_b": system_b, "n": tally["n"],
            "wins_a": tally["wins_a"], "wins_b": tally["wins_b"], "ties": tally["ties"],
            "win_rate_a": tally["win_rate_a"], "ci_low": low, "ci_high": high,
            "length_controlled_win_rate_a": length_controlled_win_rate(outcome, length_diff),
            "mean_length_diff_chars": float(length_diff.mean()),
        })
    return rows


def criterion_win_rates(verdicts: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    winners: dict[tuple, list[str]] = defaultdict(list)
    for (judge, system_a, system_b, criterion, _), verdict in verdicts.items():
        winners[(judge, system_a, system_b, criterion)].append(verdict["winner"])
    rows = []
    for (judge, system_a, system_b, criterion), mine in sorted(winners.items()):
        tally = win_tally(mine, system_a, system_b)
        rows.append({"judge": judge, "system_a": system_a, "system_b": system_b, "criterion": criterion,
                     "wins_a": tally["wins_a"], "wins_b": tally["wins_b"], "ties": tally["ties"],
                     "win_rate_a": tally["win_rate_a"]})
    return rows


def rubric_means(rubric: list[dict[str, Any]], *, n_bootstrap: int, seed: int) -> list[dict[str, Any]]:
    scores: dict[tuple, list[int]] = defaultdict(list)
    for row in rubric:
        for dimension, score in json.loads(row["scores"]).items():
            scores[(row["judge"], row["system"], dimension)].append(score)
    rows = []
    for (judge, system, dimension), values in sorted(scores.items()):
        array = np.array(values, dtype=float)
        low, high = _mean_ci(array, Bootstrap(n_bootstrap, seed))
        rows.append({"judge": judge, "system": system, "dimension": dimension, "n": len(values),
                     "mean": float(array.mean()), "ci_low": low, "ci_high": high,
                     "histogram": {str(s): values.count(s) for s in range(1, 6)}})
    return rows


def judgments_to_ratings(
    judgments: list[dict[str, Any]], systems: dict[str, dict[str, dict[str, str]]] | None = None
) -> list[dict[str, Any]]:
    """The judges' verdicts in `sefl-ray agreement`'s long form: pairwise items are `item::system_a::system_b`
    with choice A (system_a wins), B or tie after both orders, in the dimension `overall` (with the `sefl` preset,
    the majority over criteria) and, when judged per criterion, once more per criterion as its own dimension;
    rubric items are `item::system` with one score per dimension. Human ratings compared with them use the same
    item ids. With `systems` ({system: {item_id: {"prompt", "feedback"}}}) pairwise rows also carry `length_a` and
    `length_b` (characters of system_a's and system_b's feedback) and `order: both`, since each verdict combines
    both presentation orders."""
    ok = [row for row in judgments if row["status"] == "ok"]
    verdicts = combine_orders([row for row in ok if row["kind"] == "pairwise"])
    per_dimension = {(judge, a, b, "overall", item): winner
                     for (judge, a, b, item), winner in overall_verdicts(verdicts).items()}
    per_dimension.update({key: verdict["winner"] for key, verdict in verdicts.items() if key[3] != "overall"})
    ratings = []
    for (judge, a, b, dimension, item), winner in sorted(per_dimension.items()):
        rating = {"item_id": f"{item}::{a}::{b}", "rater": judge, "rater_kind": "judge", "dimension": dimension,
                  "choice": "A" if winner == a else "B" if winner == b else "tie", "system_a": a, "system_b": b}
        if systems is not None:
            rating.update(length_a=len(systems[a][item]["feedback"]), length_b=len(systems[b][item]["feedback"]),
                          order="both")
        ratings.append(rating)
    if ratings:
        return ratings
    return [{"item_id": f"{row['item_id']}::{row['system']}", "rater": row["judge"], "rater_kind": "judge",
             "score": score, "dimension": dimension}
            for row in ok if row["kind"] == "rubric" for dimension, score in json.loads(row["scores"]).items()]


def _mean_ci(values: np.ndarray, bootstrap: Bootstrap) -> tuple[float | None, float | None]:
    """The bootstrap interval of a mean, none for a single item: every resample of one item is that item, and a
    zero-width interval would read as certainty."""
    return mean_ci(values, bootstrap) if len(values) > 1 else (None, None)


def length_controlled_win_rate(outcome: np.ndarray, length_diff: np.ndarray) -> float | None:
    """P(system_a wins) at zero length difference, from a logistic fit of the outcome on tanh(diff / sd); ties
    enter as half a win and half a loss. None when one outcome is all there is (nothing to fit)."""
    from sklearn.linear_model import LogisticRegression

    if len(outcome) < 4 or len(set(outcome.tolist()) - {0.5}) == 0:
        return None
    scale = length_diff.std() or 1.0
    features = np.tanh(length_diff / scale).reshape(-1, 1)
    x = np.concatenate([features, features])
    y = np.concatenate([np.ones(len(outcome)), np.zeros(len(outcome))])
    weight = np.concatenate([outcome, 1 - outcome])
    keep = weight > 0
    if len(set(y[keep])) < 2:
        return float(outcome.mean())
    model = LogisticRegression(C=10.0).fit(x[keep], y[keep], sample_weight=weight[keep])
    return float(1 / (1 + np.exp(-model.intercept_[0])))


def _call_counts(judgments: list[dict[str, Any]]) -> dict[str, int]:
    ok = sum(row["status"] == "ok" for row in judgments)
    return {"total": len(judgments), "ok": ok, "failed": len(judgments) - ok,
            "cached": sum(bool(row.get("cached")) for row in judgments)}