"""The Examples part: a few items side by side, as SEFL's supplement shows them: the assignment, the student's
answer, each system's feedback, and every judge's answers in both orders with its rationale.

Items are the first `N_EXAMPLES` item ids, in sorted order, that every system answered: the same ones on every
rebuild, and (since ids are hashes) an unbiased draw. The assignment and answer come from the synth records (the
item id is the record id); without them they are read back out of the prompt, which is SEFL's
`### ASSIGNMENT: … ### ANSWER: …` rendering.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sefl_ray.data.records import iter_record_tables
from sefl_ray.layout import RunLayout
from sefl_ray.report.inference import read_outputs, system_names
from sefl_ray.report.sections import not_run, section, short_path

N_EXAMPLES = 6
ASSIGNMENT_MARK, ANSWER_MARK = "### ASSIGNMENT:\n", "\n\n### ANSWER:\n"
JUDGMENT_COLUMNS = ["kind", "judge", "model", "item_id", "system_a", "system_b", "order", "criterion", "system",
                    "choice", "winner", "scores", "rationale", "status", "error"]


def example_sections(run_dir: Path) -> list[dict[str, Any]]:
    layout = RunLayout(run_dir)
    names = system_names(layout)
    if not names:
        return [not_run("infer", layout.infer_outputs("<system>"), run_dir)]
    outputs = {name: {row["item_id"]: row for row in read_outputs(layout, name)} for name in names}
    shared = sorted(set.intersection(*(set(rows) for rows in outputs.values())))
    chosen = shared[:N_EXAMPLES]
    texts = _assignments(layout.synth_records, chosen)
    verdicts, scores = _judgments(layout.judgments, chosen)
    judged = layout.judgments.exists()
    examples = []
    for item in chosen:
        first = outputs[names[0]][item]
        assignment, answer = texts.get(item) or _split_prompt(first["prompt"] or "")
        tables = [table for table in (verdict_table(verdicts.get(item, [])), score_table(scores.get(item, [])))
                  if table[1]]
        examples.append({
            "item_id": item,
            "texts": [("assignment", "Assignment", assignment), ("answer", "Student answer", answer)],
            "feedback": [_feedback(name, outputs[name][item], run_dir) for name in names],
            "tables": tables,
            "note": "" if tables else "No judge verdict for this item." if judged else
                    "The judge stage has not run here.",
        })
    note = (f"{len(chosen)} of the {len(shared)} items every system answered (the first by item id), with every "
            "judge's answer in both orders. Text is shown exactly as the models wrote it: escaped, never run.")
    if len(shared) < N_EXAMPLES:
        note += f" The test set has only {len(shared)} shared item(s), fewer than {N_EXAMPLES}."
    return [{**section("Side by side", note, warning=len(shared) < N_EXAMPLES), "examples": examples}]


def _assignments(records_dir: Path, items: list[str]) -> dict[str, tuple[str, str]]:
    wanted = set(items)
    texts = {}
    for table in iter_record_tables(records_dir, columns=["assignment", "submission"]):  # a file at a time
        texts.update({row["id"]: (row["assignment"], row["submission"]) for row in table.to_pylist()
                      if row["id"] in wanted and row["status"] == "ok"})
    return texts


def _split_prompt(prompt: str) -> tuple[str, str]:
    """(assignment, answer) from SEFL's user turn; the whole prompt as the assignment when it is not one."""
    if prompt.startswith(ASSIGNMENT_MARK) and ANSWER_MARK in prompt:
        assignment, answer = prompt[len(ASSIGNMENT_MARK):].split(ANSWER_MARK, 1)
        return assignment, answer
    return prompt, "(not recorded separately: the prompt above holds it)"


def _feedback(system: str, row: dict[str, Any], run_dir: Path) -> tuple[str, str, str]:
    """(system, heading, text) of one system's feedback on the item."""
    body = row["feedback"] if row["status"] == "ok" else f"(failed: {row['error']})"
    return system, f"{system} feedback ({short_path(row['model'] or '', run_dir)})", body or ""


def _judgments(path: Path, items: list[str]) -> tuple[dict[str, list], dict[str, list]]:
    """Per item: the pairwise verdicts (both orders and the verdict they give together) and the rubric scores."""
    if not path.exists():
        return {}, {}
    table = pq.read_table(path, columns=JUDGMENT_COLUMNS)
    rows = table.filter(pc.is_in(table["item_id"], value_set=pa.array(items, type=pa.string()))).to_pylist()
    verdicts: dict[str, dict[tuple, dict]] = {}
    scores: dict[str, list] = {}
    for row in sorted(rows, key=lambda r: (r["judge"], r["criterion"] or "", r["system"] or "", r["order"] or "")):
        item = row["item_id"]
        if row["kind"] == "pairwise":
            key = (row["judge"], row["system_a"], row["system_b"], row["criterion"])
            verdict = verdicts.setdefault(item, {}).setdefault(key, {
                "judge": row["judge"], "model": row["model"], "system_a": row["system_a"],
                "system_b": row["system_b"], "criterion": row["criterion"], "orders": {}})
            shown = (row["system_a"], row["system_b"]) if row["order"] == "AB" else (row["system_b"], row["system_a"])
            verdict["orders"][row["order"]] = {"shown": f"A = {shown[0]}, B = {shown[1]}", "choice": row["choice"],
                                               "winner": row["winner"], "rationale": row["rationale"],
                                               "status": row["status"], "error": row["error"]}
        else:
            scores.setdefault(item, []).append({
                "judge": row["judge"], "system": row["system"], "rationale": row["rationale"],
                "scores": json.loads(row["scores"]) if row["status"] == "ok" and row["scores"] else None,
                "error": row["error"]})
    for per_item in verdicts.values():
        for verdict in per_item.values():
            verdict["winner"] = combined_winner(verdict["orders"])
    return {item: list(per_item.values()) for item, per_item in verdicts.items()}, scores


def verdict_table(verdicts: list[dict]) -> tuple[list[str], list[list[Any]]]:
    header = ["judge", "pair", "criterion", "first order: answer → winner", "second order: answer → winner",
              "verdict after both orders", "rationale (first order)", "rationale (second order)"]
    rows = []
    for v in verdicts:
        orders = [v["orders"].get(key) for key in ("AB", "BA")]
        rows.append([v["judge"], f"{v['system_a']} vs {v['system_b']}", v["criterion"],
                     *(_order_cell(order) for order in orders), v["winner"],
                     *((order or {}).get("rationale") or "" for order in orders)])
    return header, rows


def _order_cell(order: dict[str, Any] | None) -> str:
    if order is None:
        return "no answer"
    if order["status"] != "ok":
        return f"failed: {_clip(order['error'])}"
    return f"{order['shown']}: {order['choice']} → {order['winner']}"


def score_table(scores: list[dict]) -> tuple[list[str], list[list[Any]]]:
    rows = [[s["judge"], s["system"], ", ".join(f"{k} {v}" for k, v in s["scores"].items()) if s["scores"]
             else f"failed: {_clip(s['error'])}", s["rationale"] or ""] for s in scores]
    return ["judge", "system", "rubric scores (1–5)", "rationale"], rows


def _clip(message: str | None, limit: int = 300) -> str:
    """An error message short enough for a table cell (a parse error quotes the model's whole reply)."""
    message = message or ""
    return message if len(message) <= limit else message[:limit] + " …"


def combined_winner(orders: dict[str, dict]) -> str:
    """The verdict of both orders together, as the judge stage counts it: the same winner twice, else a tie."""
    answered = [orders.get(key) for key in ("AB", "BA")]
    if any(order is None or order["status"] != "ok" for order in answered):
        return "none (an order has no answer)"
    winners = {order["winner"] for order in answered}
    return winners.pop() if len(winners) == 1 else "tie (the orders disagree)"
