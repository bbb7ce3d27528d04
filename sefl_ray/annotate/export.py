"""`sefl-ray annotate export`: the study's answers, unblinded, in the files the rest of sefl-ray reads.

Into `STUDY_DIR/export/` (or `--out`):
    ratings.jsonl      the long form of `sefl-ray agreement`: one row per (item, annotator, choice question) with
                       item_id `source::system_a::system_b` (the judge stage's ids), rater, rater_kind human,
                       dimension (the question: overall, accuracy, ...), choice as shown, system_a/system_b as
                       shown (A first), length_a/length_b (characters of the feedback shown as A and B), order
                       `shown`; current revisions of regular slots only (repeats and gold are quality checks)
    scores.jsonl       the 1-5 score questions (the rubric), item_id `source::system`, as the judge's rubric rows;
                       only when the study asks them (scores and choices go to `agreement` in separate runs)
    preferences.jsonl  preference pairs for preference tuning: {prompt, chosen, rejected} plus item_id,
                       chosen_system, rejected_system and votes, where the annotators' majority on `overall`
                       prefers one system (ties and split items are left out)
    answers.jsonl      every answer ever given (all revisions, comments, sense, repeats, gold) with its slot,
                       position, shown order and the systems behind A and B
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sefl_ray.annotate.store import Store
from sefl_ray.config import SeflConfig
from sefl_ray.data.sft import render_prompt
from sefl_ray.durable import write_jsonl
from sefl_ray.errors import InputNotFoundError

logger = logging.getLogger(__name__)

_SWAPPED = {"A": "B", "B": "A", "tie": "tie"}


def export_study(config: SeflConfig, out_dir: str | Path | None = None) -> Path:
    settings = config.annotate
    db_path = settings.resolved_db_path(config.run_dir)
    out = Path(out_dir) if out_dir else settings.resolved_study_dir(config.run_dir) / "export"
    store = open_study(db_path)
    try:
        ratings, scores = human_ratings(store), score_ratings(store)
        preferences, answers = preference_pairs(store), answer_log(store)
    finally:
        store.close()
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "ratings.jsonl", ratings)
    if scores:
        write_jsonl(out / "scores.jsonl", scores)
    write_jsonl(out / "preferences.jsonl", preferences)
    write_jsonl(out / "answers.jsonl", answers)
    logger.info("annotate export: %d ratings, %d scores, %d preference pairs, %d answers -> %s", len(ratings),
                len(scores), len(preferences), len(answers), out)
    return out


def open_study(db_path: Path) -> Store:
    store = Store(db_path)
    if not store.exists():
        raise InputNotFoundError(f"annotate: no study at {db_path} (run `sefl-ray annotate create CONFIG`)")
    return store


def shown_systems(item: sqlite3.Row, shown_order: str) -> tuple[str, str]:
    """(system shown as A, system shown as B)."""
    return (item["system_a"], item["system_b"]) if shown_order == "AB" else (item["system_b"], item["system_a"])


def shown_feedback(item: sqlite3.Row, shown_order: str) -> tuple[str, str]:
    return ((item["feedback_a"], item["feedback_b"]) if shown_order == "AB"
            else (item["feedback_b"], item["feedback_a"]))


def chosen_system(value: str, item: sqlite3.Row, shown_order: str) -> str:
    """The system a shown choice (A, B or tie) names, or 'tie'."""
    if value == "tie":
        return "tie"
    first, second = shown_systems(item, shown_order)
    return first if value == "A" else second


def human_ratings(store: Store) -> list[dict[str, Any]]:
    kinds = {question["name"]: question["kind"] for question in store.questions()}
    items = {row["item_id"]: row for row in store.items()}
    slots = {row["slot_id"]: row for row in store.slots()}
    ratings = []
    for answer in store.current_answers():
        slot = slots[answer["slot_id"]]
        if slot["kind"] != "regular" or kinds.get(answer["question"]) != "choice":
            continue
        item = items[answer["item_id"]]
        system_a, system_b = shown_systems(item, slot["shown_order"])
        feedback_a, feedback_b = shown_feedback(item, slot["shown_order"])
        ratings.append({"item_id": answer["item_id"], "rater": answer["annotator"], "rater_kind": "human",
                        "dimension": answer["question"], "choice": answer["value"], "system_a": system_a,
                        "system_b": system_b, "length_a": len(feedback_a), "length_b": len(feedback_b),
                        "order": "shown", "answered_at": answer["answered_at"], "revision": answer["revision"]})
    return ratings


def score_ratings(store: Store) -> list[dict[str, Any]]:
    """Rubric scores per system's feedback; with three or more systems a feedback met in several pairs keeps the
    score of its first position in the annotator's queue."""
    questions = {question["name"]: question for question in store.questions() if question["kind"] == "score"}
    items = {row["item_id"]: row for row in store.items()}
    slots = {row["slot_id"]: row for row in store.slots()}
    ratings, seen = [], set()
    for answer in store.current_answers():
        question = questions.get(answer["question"])
        slot = slots[answer["slot_id"]]
        if question is None or slot["kind"] != "regular":
            continue
        item = items[answer["item_id"]]
        system = shown_systems(item, slot["shown_order"])[0 if question["side"] == "A" else 1]
        dimension = question["name"].removeprefix("rubric_").removesuffix(f"_{question['side'].lower()}")
        key = (item["source_item"], system, answer["annotator"], dimension)
        if key in seen:
            continue
        seen.add(key)
        ratings.append({"item_id": f"{item['source_item']}::{system}", "rater": answer["annotator"],
                        "rater_kind": "human", "dimension": dimension, "score": int(answer["value"])})
    return ratings


def preference_pairs(store: Store) -> list[dict[str, Any]]:
    items = {row["item_id"]: row for row in store.items()}
    votes: dict[str, Counter] = defaultdict(Counter)
    for rating in human_ratings(store):
        if rating["dimension"] == "overall":
            item = items[rating["item_id"]]
            shown = "AB" if rating["system_a"] == item["system_a"] else "BA"
            votes[rating["item_id"]][chosen_system(rating["choice"], item, shown)] += 1
    pairs = []
    for item_id, counts in sorted(votes.items()):
        ranked = counts.most_common(2)
        winner = ranked[0][0]
        if winner == "tie" or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
            continue
        item = items[item_id]
        loser = item["system_b"] if winner == item["system_a"] else item["system_a"]
        feedback = {item["system_a"]: item["feedback_a"], item["system_b"]: item["feedback_b"]}
        prompt = item["prompt"] or render_prompt(item["assignment"], item["submission"])
        pairs.append({"prompt": prompt, "chosen": feedback[winner], "rejected": feedback[loser], "item_id": item_id,
                      "chosen_system": winner, "rejected_system": loser, "votes": dict(counts)})
    return pairs


def answer_log(store: Store) -> list[dict[str, Any]]:
    items = {row["item_id"]: row for row in store.items()}
    slots = {row["slot_id"]: row for row in store.slots()}
    log = []
    for answer in store.all_answers():
        item, slot = items[answer["item_id"]], slots[answer["slot_id"]]
        system_a, system_b = shown_systems(item, answer["shown_order"])
        log.append({**dict(answer), "kind": slot["kind"], "shown_a": system_a, "shown_b": system_b})
    return log


