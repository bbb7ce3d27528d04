"""Reading human and judge ratings in long form (CSV, JSONL, JSON, parquet) into checked `Rating`s, so the
agreement statistics never see a malformed, duplicated or ambiguous row.

One row per (item, rater[, dimension]):

- `item_id`, `rater`, `rater_kind` (`human` or `judge`): required.
- `choice` (`A`, `B` or `tie`; case-insensitive) for pairwise ratings, or `score` (a whole number, e.g. 1-5) for
  rubric ratings. Exactly one of them per row, and one kind for the whole run.
- `dimension`: optional; rows without one belong to the dimension `overall`.
- `system_a`, `system_b`: optional, pairwise only: which system was shown as A and as B. All rows of an item give
  them or none does, and they name the same two systems (in either order).
- `length_a`, `length_b`: optional, pairwise: the length in characters of the feedback shown as A and as B (whole
  numbers, 0 or more; both or neither). They let the calibration measure a preference for longer feedback.
- `order`: optional, pairwise: `shown` (the default) when the choice is as the rater saw the pair, `both` when the
  verdict already combines both presentation orders (a judge run in both orders), so it says nothing about the
  first position.

Error messages name the file and the row (1-based, not counting a CSV header).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from sefl_ray.data.tables import read_rows
from sefl_ray.errors import ConfigError

REQUIRED_COLUMNS = ("item_id", "rater", "rater_kind")
CHOICES = ("A", "B", "tie")
RATER_KINDS = ("human", "judge")
ORDERS = ("shown", "both")
DEFAULT_DIMENSION = "overall"
_SWAPPED = {"A": "B", "B": "A", "tie": "tie"}


class Rating(NamedTuple):
    """One checked rating. `value` is a choice as shown to the rater (`A`/`B`/`tie`) or an int score."""

    item: str
    rater: str
    kind: str
    dimension: str
    value: str | int
    systems: tuple[str, str] | None
    where: str
    lengths: tuple[int, int] | None = None  # characters of the feedback shown as A and as B
    order: str = "shown"  # "both": the verdict combines both presentation orders


def read_ratings(paths: list[str | Path]) -> tuple[list[Rating], str]:
    """All ratings of `paths`, checked across files, and the run's rating type: `choice` or `score`."""
    if not paths:
        raise ConfigError("ratings: no input files given; pass at least one CSV, JSONL, JSON or parquet file")
    ratings = []
    for path in map(Path, paths):
        rows = read_rows(path, key="ratings")
        if not rows:
            raise ConfigError(f"{path}: no ratings in the file")
        ratings += [_parse_row(row, f"{path} row {number}") for number, row in enumerate(rows, 1)]
    rating_type = _check_one_type(ratings)
    _check_unique(ratings)
    _check_rater_kinds(ratings)
    if rating_type == "choice":
        _check_systems(ratings)
    return ratings, rating_type


def aligned_choices(ratings: list[Rating]) -> dict[tuple[str, str, str], str]:
    """Choices keyed by (dimension, rater, item), with A and B swapped back for raters who saw an item's systems in
    the reverse order of the item's first row, so that `A` names the same system for every rater of an item."""
    reference: dict[str, tuple[str, str] | None] = {}
    aligned = {}
    for rating in ratings:
        first = reference.setdefault(rating.item, rating.systems)
        swapped = rating.systems is not None and rating.systems != first
        aligned[(rating.dimension, rating.rater, rating.item)] = _SWAPPED[rating.value] if swapped else rating.value
    return aligned


def _parse_row(row: dict[str, Any], where: str) -> Rating:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected an object with columns {', '.join(REQUIRED_COLUMNS)}, got {row!r}")
    for column in REQUIRED_COLUMNS:
        if _blank(row.get(column)):
            state = "is empty" if column in row else "is missing"
            raise ConfigError(f"{where}: column '{column}' {state}; every row needs "
                              f"{', '.join(REQUIRED_COLUMNS)} and either choice or score")
    kind = str(row["rater_kind"]).strip().lower()
    if kind not in RATER_KINDS:
        raise ConfigError(f"{where}: rater_kind '{row['rater_kind']}' is not one of {', '.join(RATER_KINDS)}")
    choice, score = row.get("choice"), row.get("score")
    if _blank(choice) and _blank(score):
        raise ConfigError(f"{where}: neither 'choice' (A, B or tie) nor 'score' given; every rating needs one")
    if not _blank(choice) and not _blank(score):
        raise ConfigError(f"{where}: both 'choice' and 'score' given; a row holds one pairwise choice or one score")
    value = _parse_score(score, where) if _blank(choice) else _parse_choice(choice, where)
    dimension = DEFAULT_DIMENSION if _blank(row.get("dimension")) else str(row["dimension"]).strip()
    return Rating(item=str(row["item_id"]).strip(), rater=str(row["rater"]).strip(), kind=kind, dimension=dimension,
                  value=value, systems=_parse_systems(row, where), where=where, lengths=_parse_lengths(row, where),
                  order=_parse_order(row.get("order"), where))


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def _parse_choice(choice: Any, where: str) -> str:
    text = str(choice).strip()
    normalized = text.upper() if text.upper() in ("A", "B") else text.lower()
    if normalized not in CHOICES:
        raise ConfigError(f"{where}: choice '{choice}' is not one of {', '.join(CHOICES)}")
    return normalized


def _parse_score(score: Any, where: str) -> int:
    if isinstance(score, bool):
        raise ConfigError(f"{where}: score {score!r} is not a whole number")
    try:
        number = float(score)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: score '{score}' is not a whole number") from None
    if not number.is_integer():
        raise ConfigError(f"{where}: score '{score}' is not a whole number; agreement on scores needs whole numbers")
    return int(number)


def _parse_systems(row: dict[str, Any], where: str) -> tuple[str, str] | None:
    system_a, system_b = row.get("system_a"), row.get("system_b")
    if _blank(system_a) and _blank(system_b):
        return None
    if _blank(system_a) or _blank(system_b):
        raise ConfigError(f"{where}: give both system_a and system_b, or neither")
    systems = (str(system_a).strip(), str(system_b).strip())
    if systems[0] == systems[1]:
        raise ConfigError(f"{where}: system_a and system_b are both '{systems[0]}'; a pair compares two systems")
    return systems


def _parse_lengths(row: dict[str, Any], where: str) -> tuple[int, int] | None:
    length_a, length_b = row.get("length_a"), row.get("length_b")
    if _blank(length_a) and _blank(length_b):
        return None
    if _blank(length_a) or _blank(length_b):
        raise ConfigError(f"{where}: give both length_a and length_b (characters of feedback A and B), or neither")
    return _parse_length(length_a, "length_a", where), _parse_length(length_b, "length_b", where)


def _parse_length(length: Any, column: str, where: str) -> int:
    try:
        number = float(length) if not isinstance(length, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (number.is_integer() and number >= 0):
        raise ConfigError(f"{where}: {column} '{length}' is not a whole number of characters (0 or more)")
    return int(number)


def _parse_order(order: Any, where: str) -> str:
    if _blank(order):
        return "shown"
    normalized = str(order).strip().lower()
    if normalized not in ORDERS:
        raise ConfigError(f"{where}: order '{order}' is not one of {', '.join(ORDERS)} (shown: the choice is as the "
                          f"rater saw the pair; both: it combines both presentation orders)")
    return normalized


def _check_one_type(ratings: list[Rating]) -> str:
    first = ratings[0]
    first_type = "score" if isinstance(first.value, int) else "choice"
    for rating in ratings:
        if ("score" if isinstance(rating.value, int) else "choice") != first_type:
            raise ConfigError(f"{rating.where}: mixes pairwise choices and scores ({first.where} is a {first_type}); "
                              f"compute agreement on pairwise and score ratings in separate runs")
    return first_type


def _check_unique(ratings: list[Rating]) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for rating in ratings:
        key = (rating.item, rating.rater, rating.dimension)
        if key in seen:
            raise ConfigError(f"{rating.where}: duplicate rating of item '{rating.item}' by rater '{rating.rater}' "
                              f"(dimension '{rating.dimension}'), already at {seen[key]}; keep one row per item, "
                              f"rater and dimension")
        seen[key] = rating.where


def _check_rater_kinds(ratings: list[Rating]) -> None:
    kinds: dict[str, Rating] = {}
    for rating in ratings:
        first = kinds.setdefault(rating.rater, rating)
        if first.kind != rating.kind:
            raise ConfigError(f"{rating.where}: rater '{rating.rater}' is a {rating.kind} here but a {first.kind} at "
                              f"{first.where}; give each rater one rater_kind")


def _check_systems(ratings: list[Rating]) -> None:
    first_of_item: dict[str, Rating] = {}
    for rating in ratings:
        first = first_of_item.setdefault(rating.item, rating)
        if (first.systems is None) != (rating.systems is None):
            raise ConfigError(f"{rating.where}: item '{rating.item}' gives system_a/system_b in some rows but not in "
                              f"others ({first.where}); give them on every row of an item or on none")
        if first.systems is not None and set(first.systems) != set(rating.systems):
            raise ConfigError(f"{rating.where}: item '{rating.item}' compares {' vs '.join(rating.systems)} here but "
                              f"{' vs '.join(first.systems)} at {first.where}; one item compares one pair of systems")
