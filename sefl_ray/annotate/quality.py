"""What the admin view shows: progress per annotator, self-consistency on repeated items, accuracy on gold items,
and live agreement among the humans and of each judge with the human majority, computed by `agreement_report`,
the code of `sefl-ray agreement`, on the answers so far."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from sefl_ray.annotate.export import chosen_system, human_ratings
from sefl_ray.annotate.store import Store
from sefl_ray.data.tables import read_rows
from sefl_ray.durable import write_jsonl
from sefl_ray.errors import SeflError
from sefl_ray.judge.agreement import agreement_report


def progress(store: Store) -> list[dict[str, Any]]:
    questions = store.questions()
    required = {q["name"] for q in questions if q["required"]}
    choices = {q["name"] for q in questions if q["kind"] in ("choice", "yesno", "score")}
    items = {row["item_id"]: row for row in store.items()}
    slots = store.slots()
    answers = store.current_answers()
    last = store.last_answer_at()
    counts: dict[str, int] = defaultdict(int)
    for row in store.all_answers():
        counts[row["annotator"]] += 1
    by_slot: dict[str, dict[str, str]] = defaultdict(dict)
    for answer in answers:
        if answer["value"] != "":
            by_slot[answer["slot_id"]][answer["question"]] = answer["value"]
    report = []
    for annotator in store.annotators():
        mine = [slot for slot in slots if slot["annotator"] == annotator]
        complete = sum(required <= set(by_slot[slot["slot_id"]]) for slot in mine)
        consistency = _self_consistency(mine, by_slot, items, choices)
        gold = _gold_accuracy(mine, by_slot, items)
        report.append({"annotator": annotator, "slots": len(mine), "complete": complete,
                       "answers": counts[annotator], "last_answer_at": last.get(annotator), **consistency, **gold})
    return report


def live_agreement(store: Store, *, n_bootstrap: int, seed: int) -> tuple[dict[str, Any] | None, str | None]:
    """(report, None), or (None, why there is none yet)."""
    humans = human_ratings(store)
    if not humans:
        return None, "no answers yet"
    study_items = {row["item_id"] for row in store.items()}
    judge_path = Path(store.meta().get("judge_ratings") or "")
    judges = []
    if judge_path.is_file():
        judges = [row for row in read_rows(judge_path, key="annotate.judge_ratings")
                  if row.get("item_id") in study_items and row.get("choice") not in (None, "")]
    with tempfile.TemporaryDirectory(prefix="sefl-annotate-") as folder:
        paths = [Path(folder) / "humans.jsonl"]
        write_jsonl(paths[0], humans)
        if judges:
            paths.append(Path(folder) / "judges.jsonl")
            write_jsonl(paths[1], judges)
        try:
            return agreement_report(paths, n_bootstrap=n_bootstrap, seed=seed), None
        except SeflError as exc:
            return None, f"agreement cannot be computed yet: {exc}"


def _self_consistency(slots, by_slot, items, choices) -> dict[str, Any]:
    """Share of repeated (item, question) answers that name the same system (or tie) both times."""
    first = {slot["item_id"]: slot for slot in slots if slot["kind"] == "regular"}
    same = pairs = 0
    for repeat in (slot for slot in slots if slot["kind"] == "repeat"):
        original = first.get(repeat["item_id"])
        if original is None:
            continue
        item = items[repeat["item_id"]]
        for question in choices & by_slot[original["slot_id"]].keys() & by_slot[repeat["slot_id"]].keys():
            before, after = by_slot[original["slot_id"]][question], by_slot[repeat["slot_id"]][question]
            if before in ("A", "B", "tie"):
                before = chosen_system(before, item, original["shown_order"])
                after = chosen_system(after, item, repeat["shown_order"])
            pairs += 1
            same += before == after
    return {"self_consistency": same / pairs if pairs else None, "repeat_pairs": pairs}


def _gold_accuracy(slots, by_slot, items) -> dict[str, Any]:
    hits = total = 0
    for slot in (slot for slot in slots if slot["kind"] == "gold"):
        item = items[slot["item_id"]]
        for question, expected in json.loads(item["gold"] or "{}").items():
            given = by_slot[slot["slot_id"]].get(question)
            if given is not None:
                total += 1
                hits += chosen_system(given, item, slot["shown_order"]) == expected
    return {"gold_accuracy": hits / total if total else None, "gold_answers": total}


