"""`sefl-ray gate`: every record synth planned for this config, ruled on by the quality gates, nothing dropped.

    planned ok records -> format (no model) -> near-duplicates (MinHash on Ray Data) -> model gates on Ray Data
    through the endpoint layer: sense, coverage, giveaway (limiter, retries, call cache, usage)

A record stops at the first gate it fails: its `status` becomes `filtered`, `gate` and `gate_reason` say which and
why, and `gate_verdicts` keeps every ruling made on it (with the model's rationale and, for coverage, the mistake ->
feedback map). A gate call that fails, or an answer that is not the verdict asked for, makes the record `failed`
with the reason: it is neither passed nor filtered by default, and the next run asks again. Records synth could not
make stay `failed`. Everything lands in RUN_DIR/gate/records.parquet, which export reads, and the counts per gate,
the reasons and the duplicate clusters in gate/summary.json. Answered calls are cached (gate/call_cache), so a
re-run after a change to one gate pays only for that gate's new questions.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from sefl_ray.config import SeflConfig, log_resolved_config, save_resolved_config
from sefl_ray.data.records import GATE_VERDICT_TYPE, GATED_RECORD_SCHEMA, read_records
from sefl_ray.data.tables import read_jsonl
from sefl_ray.durable import write_json, write_parquet
from sefl_ray.errors import InputNotFoundError
from sefl_ray.gate.dedup import find_duplicates, record_text
from sefl_ray.gate.verdicts import Verdict, format_verdict
from sefl_ray.layout import RunLayout
from sefl_ray.llm.batch import EndpointBatch, RowOutcome, new_parts_dir, read_parts, run_endpoint_batches
from sefl_ray.usage import Usage, usage_of

logger = logging.getLogger(__name__)

GATE_FIELDS = ("id", "source_text", "assignment", "submission", "feedback", "feedback_items", "mistake_kinds",
               "errors")
CALL_SCHEMA = pa.schema([
    ("id", pa.string()), ("status", pa.string()), ("verdicts", pa.list_(GATE_VERDICT_TYPE)), ("gate", pa.string()),
    ("gate_reason", pa.string()), ("error", pa.string()), ("calls", pa.int64()), ("cached_calls", pa.int64()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()),
])
EXAMPLE_CLUSTERS = 5


def run_gate(config: SeflConfig) -> Path:
    """Rule on every planned record; returns RUN_DIR/gate/records.parquet."""
    settings, layout = config.gate, RunLayout(config.run_dir)
    if settings.enabled and settings.llm_gates:
        from sefl_ray.llm.endpoint import check_api_keys

        check_api_keys([config.endpoint(settings.endpoint)])
    log_resolved_config(config, "gate")
    records = planned_records(layout)
    save_resolved_config(config, layout.gate_dir)
    started = time.monotonic()
    rows = records.to_pylist()
    for row in rows:
        row.update(gate_verdicts=[], gate=None, gate_reason=None)
    passing = [row for row in rows if row["status"] == "ok"] if settings.enabled else []

    if settings.format.enabled:
        passing = _apply(passing, {row["id"]: format_verdict(row, settings.format) for row in passing})
    duplicates: dict[str, Any] = {}
    if settings.dedup.enabled:
        duplicates = find_duplicates([row["id"] for row in passing],
                                     [record_text(row, settings.dedup.fields) for row in passing], settings.dedup)
        passing = _apply(passing, {row["id"]: _dedup_verdict(duplicates.get(row["id"])) for row in passing})
    usage = Usage()
    if settings.llm_gates and passing:
        usage = _model_gates(config, passing)

    out = layout.gate_records
    write_parquet(out, pa.Table.from_pylist(rows, schema=GATED_RECORD_SCHEMA))
    summary = summarize(rows, duplicates, usage, time.monotonic() - started)
    write_json(layout.gate_summary, summary)
    logger.info("gate: %d passed, %d filtered, %d failed of %d planned records -> %s", summary["passed"],
                summary["filtered"], summary["failed"], summary["records"], out)
    return out


def planned_records(layout: RunLayout) -> pa.Table:
    """The records the current synth config planned (its plan.jsonl): a run dir may also hold an earlier config's."""
    if not layout.synth_plan.is_file():
        raise InputNotFoundError(f"{layout.synth_plan} not found: run the synth stage first (it writes the plan of "
                                 "the rows it makes, and the gate rules on those)")
    planned = {plan["id"] for plan in read_jsonl(layout.synth_plan)}
    records = read_records(layout.synth_records)
    if records.num_rows == 0:
        raise InputNotFoundError(f"no readable records (*.parquet) under {layout.synth_records}: run the synthesis "
                                 "stage first (a damaged file is set aside there, and synth makes its rows again)")
    keep = pa.array([row_id in planned for row_id in records["id"].to_pylist()], type=pa.bool_())
    left_out = records.num_rows - sum(keep.to_pylist())
    if left_out:
        logger.info("gate: %d record(s) under %s belong to another synth config; left out", left_out,
                    layout.synth_records)
    records = records.filter(keep)
    if records.num_rows == 0:
        raise InputNotFoundError(f"none of the records under {layout.synth_records} was planned by this synth "
                                 "config: run the synthesis stage with it first")
    return records


def _apply(passing: list[dict[str, Any]], verdicts: dict[str, Verdict]) -> list[dict[str, Any]]:
    """Record each row's verdict; the rows that still pass."""
    still = []
    for row in passing:
        verdict = verdicts[row["id"]]
        row["gate_verdicts"].append(verdict.to_row())
        if verdict.passed:
            still.append(row)
        else:
            row.update(status="filtered", gate=verdict.gate, gate_reason=verdict.reason)
    return still


def _dedup_verdict(duplicate: Any) -> Verdict:
    if duplicate is None:
        return Verdict("dedup", True)
    return Verdict("dedup", False, f"near-duplicate of {duplicate.kept_id} (similarity {duplicate.similarity:.2f})",
                   details={"kept_id": duplicate.kept_id, "similarity": duplicate.similarity})


def _model_gates(config: SeflConfig, passing: list[dict[str, Any]]) -> Usage:
    """The model gates over `passing` on Ray Data; each row's outcome merged into it. Returns what the calls cost."""
    settings, layout = config.gate, RunLayout(config.run_dir)
    job = EndpointBatch(label="gate", endpoints=[settings.endpoint], row_fn=gate_row, failed_row=failed_gate_row,
                        schema=CALL_SCHEMA, concurrency=settings.concurrency, batch_size=settings.batch_size,
                        num_actors=settings.num_actors, cache_dir=layout.gate_call_cache)
    inputs = [{field: row[field] for field in GATE_FIELDS} for row in passing]
    parts = run_endpoint_batches(config, inputs, job, new_parts_dir(layout.gate_dir, ".calls"))
    try:
        outcomes = {row["id"]: row for row in read_parts(parts, CALL_SCHEMA, key="id").to_pylist()}
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    usage = Usage()
    for row in passing:
        outcome = outcomes.get(row["id"]) or failed_gate_row(row, "the gate wrote no outcome for this record", config)
        row["gate_verdicts"].extend(outcome["verdicts"] or [])
        if outcome["status"] == "failed":
            row.update(status="failed", error=outcome["error"])
        elif outcome["status"] == "filtered":
            row.update(status="filtered", gate=outcome["gate"], gate_reason=outcome["gate_reason"])
        usage.add_calls(prompt_tokens=outcome["prompt_tokens"] or 0,
                        completion_tokens=outcome["completion_tokens"] or 0, cost_usd=outcome["cost_usd"],
                        calls=outcome["calls"] or 0)
    return usage


async def gate_row(row: dict[str, Any], clients: dict[str, Any], config: SeflConfig) -> RowOutcome:
    """The model gates in order on one record, until one fails it."""
    from sefl_ray.gate.prompts import gate_messages, read_verdict
    from sefl_ray.llm.client import EndpointCallFailed

    settings = config.gate
    client = clients[settings.endpoint]
    verdicts: list[Verdict] = []
    calls: list[Any] = []
    outcome: dict[str, Any] = {"status": "ok"}
    for gate in settings.llm_gates:
        messages, response_format = gate_messages(gate, row)
        try:
            result = await client.chat(messages, max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                       seed=config.seed, response_format=response_format)
        except EndpointCallFailed as failure:
            calls.append(failure.record)
            outcome = {"status": "failed", "error": f"gate {gate}: {failure.record.error}"}
            break
        calls.append(result.record)
        try:
            verdict = read_verdict(gate, row, result.text)
        except ValueError as exc:
            outcome = {"status": "failed", "error": f"gate {gate}: unreadable verdict: {exc}"}
            break
        verdicts.append(verdict)
        if not verdict.passed:
            outcome = {"status": "filtered", "gate": gate, "gate_reason": verdict.reason}
            break
    usage = usage_of(calls)
    return RowOutcome({"id": row["id"], "verdicts": [verdict.to_row() for verdict in verdicts], "gate": None,
                       "gate_reason": None, "error": None, **outcome, "calls": len(calls),
                       "cached_calls": sum(call.cached for call in calls),
                       "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                       "cost_usd": usage.cost_usd}, outcome["status"], usage)


def failed_gate_row(row: dict[str, Any], reason: str, config: SeflConfig) -> dict[str, Any]:
    return {"id": row["id"], "status": "failed", "verdicts": [], "gate": None, "gate_reason": None,
            "error": f"gate: {reason}", "calls": 0, "cached_calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "cost_usd": None}


def summarize(rows: list[dict[str, Any]], duplicates: dict[str, Any], usage: Usage, elapsed_s: float) -> dict:
    """Counts per gate (checked, passed, filtered, reasons), duplicate clusters with examples, usage."""
    statuses = Counter(row["status"] for row in rows)
    gates: dict[str, dict[str, Any]] = {}
    for row in rows:
        for verdict in row["gate_verdicts"]:
            entry = gates.setdefault(verdict["gate"], {"checked": 0, "passed": 0, "filtered": 0, "reasons": {}})
            entry["checked"] += 1
            entry["passed" if verdict["passed"] else "filtered"] += 1
            if not verdict["passed"]:
                reason = _reason_kind(verdict["reason"] or "")
                entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
    for entry in gates.values():
        entry["pass_rate"] = round(entry["passed"] / entry["checked"], 4) if entry["checked"] else None
    by_id = {row["id"]: row for row in rows}
    clusters: dict[str, list[dict[str, Any]]] = {}
    for removed, duplicate in sorted(duplicates.items()):
        clusters.setdefault(duplicate.kept_id, []).append({"id": removed, "similarity": duplicate.similarity})
    examples = [{"kept": _excerpt(by_id[kept]), "removed": [{**member, **_excerpt(by_id[member["id"]])}
                                                              for member in members]}
                for kept, members in sorted(clusters.items(), key=lambda item: (-len(item[1]), item[0]))
                [:EXAMPLE_CLUSTERS]]
    return {
        "records": len(rows), "passed": statuses["ok"], "filtered": statuses["filtered"],
        "failed": statuses["failed"], "gates": gates,
        "failure_reasons": dict(Counter((row["error"] or "unknown").split(":")[0]
                                        for row in rows if row["status"] == "failed")),
        "duplicates": {"clusters": len(clusters), "removed": len(duplicates), "examples": examples},
        "usage": usage.to_dict(), "elapsed_s": round(elapsed_s, 3),
    }


def manifest_numbers(layout: RunLayout) -> dict[str, Any]:
    summary = json.loads(layout.gate_summary.read_text())
    return {**summary["usage"], "rows": summary["records"], "passed": summary["passed"],
            "filtered": summary["filtered"], "failed": summary["failed"]}


def _reason_kind(reason: str) -> str:
    """A reason without its numbers and ids, so that the summary counts kinds ("feedback has N characters...")."""
    return re.sub(r"\d+(?:\.\d+)?", "N", re.sub(r"\b[0-9a-f]{24}\b", "<id>", reason))


def _excerpt(row: dict[str, Any]) -> dict[str, str]:
    return {"id": row["id"], "assignment": (row["assignment"] or "")[:200], "feedback": (row["feedback"] or "")[:200]}
