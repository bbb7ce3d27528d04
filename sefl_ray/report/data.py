"""The Data part: what synthesis made, from `synth/summary.json` and the records under `synth/records/`.

How many conversations ended ok or failed and why, which kinds of mistake the student was asked to make against
those it wrote down, how long assignments, answers and feedback are, and the tokens and cost of each role.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sefl_ray.data.records import iter_record_tables
from sefl_ray.layout import RunLayout
from sefl_ray.report import plots
from sefl_ray.report.sections import LENGTH_HEADER, embedded_note, fmt, length_row, not_run, read_json, section
from sefl_ray.usage import Usage

# the record columns this part reads (a file at a time, never the source passages)
REPORTED_RECORD_COLUMNS = ["error", "mistake_kinds", "errors", "feedback_items", "assignment", "submission",
                           "feedback", "teacher_model", "student_model"]


def data_sections(run_dir: Path) -> list[dict[str, Any]]:
    layout = RunLayout(run_dir)
    summary_path = layout.synth_summary
    if not summary_path.exists():
        return [not_run("synth", summary_path, run_dir)]
    summary = read_json(summary_path)
    stats = record_stats(layout.synth_records)
    export_path = layout.export_summary
    export = read_json(export_path) if export_path.exists() else None
    return [
        status_section(summary, stats, export),
        failures_section(summary, stats),
        mistakes_section(stats),
        lengths_section(stats),
        usage_section(summary),
    ]


def record_stats(records_dir: Path) -> dict[str, Any]:
    """Counts and lengths over every record (one row per id), a file at a time."""
    stats: dict[str, Any] = {"sampled": Counter(), "sampled_ok": Counter(), "written": Counter(),
                             "feedback_items": 0, "asked_ok": 0, "error_examples": {}, "teachers": set(),
                             "students": set(), "lengths": {"assignment": [], "answer": [], "feedback": []}}
    for table in iter_record_tables(records_dir, columns=REPORTED_RECORD_COLUMNS):
        for row in table.to_pylist():
            kinds = row["mistake_kinds"] or []
            stats["sampled"].update(kinds)
            stats["teachers"].add(row["teacher_model"])
            stats["students"].add(row["student_model"])
            if row["status"] != "ok":
                reason = (row["error"] or "unknown").split(":")[0]
                stats["error_examples"].setdefault(reason, row["error"] or "")
                continue
            stats["sampled_ok"].update(kinds)
            written = row["errors"] or []
            # the student lists its mistakes in the order it was asked for them
            stats["written"].update(kind for kind, error in zip(kinds, written) if error and error.strip())
            stats["asked_ok"] += len(kinds)
            stats["feedback_items"] += len(row["feedback_items"] or [])
            for name, column in (("assignment", "assignment"), ("answer", "submission"), ("feedback", "feedback")):
                stats["lengths"][name].append(len(row[column] or ""))
    return stats


def status_section(summary: dict, stats: dict, export: dict | None) -> dict[str, Any]:
    note = (embedded_note({"teacher": sorted(stats["teachers"]), "student": sorted(stats["students"])})
            + "Every planned conversation is a record, ok or failed; none is dropped.")
    if export:
        splits = ", ".join(f"{name} {count}" for name, count in export["splits"].items())
        note += (f" The export holds {export['records']['exported']} records ({splits}; Data quality says what the "
                 "gates passed).")
    rate = summary.get("conversations_per_s")
    return section("Conversations", note, table=(
        ["planned", "ok", "failed", "missing", "skipped by budget", "conversations/s (last run)"],
        [[summary["planned"], summary["ok"], summary["failed"], summary["missing"], summary["skipped_by_budget"],
          fmt(rate, 2) if rate is not None else ""]]))


def failures_section(summary: dict, stats: dict) -> dict[str, Any]:
    reasons = summary.get("failure_reasons") or {}
    if not reasons:
        return section("Failed conversations", "No conversation failed.")
    rows = [[reason, count, stats["error_examples"].get(reason, "")[:400]]
            for reason, count in sorted(reasons.items(), key=lambda item: -item[1])]
    return section("Failed conversations", "Why rows failed (the first part of each error), with one full message "
                   "each; the failed rows keep the raw model text in `synth/records`.",
                   table=(["reason", "rows", "example error"], rows))


def mistakes_section(stats: dict) -> dict[str, Any]:
    kinds = sorted(stats["sampled"], key=lambda kind: (-stats["sampled"][kind], kind))
    if not kinds:
        return section("Mistake kinds", "No record holds sampled mistakes.")
    rows = [[kind, stats["sampled"][kind], stats["sampled_ok"][kind], stats["written"][kind]] for kind in kinds]
    rows.append(["all", sum(stats["sampled"].values()), sum(stats["sampled_ok"].values()),
                 sum(stats["written"].values())])
    note = ("Sampled: the kinds of mistake the student was asked to make (every record, and the ok ones). Written: "
            "the mistakes the student wrote down in ok records, matched to the kinds by their order. The teacher's "
            f"feedback has {stats['feedback_items']} items for the {stats['asked_ok']} mistakes asked in ok records.")
    plot = plots.counts_bars(kinds, {"sampled (ok records)": [stats["sampled_ok"][k] for k in kinds],
                                     "written by the student": [stats["written"][k] for k in kinds]},
                             ylabel="mistakes")
    return section("Mistake kinds", note, table=(["kind", "sampled", "sampled (ok)", "written"], rows), plot=plot)


def lengths_section(stats: dict) -> dict[str, Any]:
    lengths = stats["lengths"]
    rows = [length_row(name, values) for name, values in lengths.items()]
    plot = plots.length_histograms(lengths) if any(lengths.values()) else None
    return section("Lengths", "Characters of the assignments, the student's answers and the teacher's feedback "
                   "(ok records).", table=(LENGTH_HEADER, rows), plot=plot)


def usage_section(summary: dict) -> dict[str, Any]:
    rows = []
    # per role:model; a summary written before the Usage record kept them under `usage`
    by_role = summary.get("usage_by_role")
    if by_role is None and all(isinstance(entry, dict) for entry in (summary.get("usage") or {}).values()):
        by_role = summary.get("usage") or {}
    for key, entry in (by_role or {}).items():
        role, _, model = key.partition(":")
        usage = Usage.from_dict(entry)
        rows.append([role, model, usage.calls, usage.retries, usage.prompt_tokens, usage.completion_tokens,
                     usage.cost_text()])
    return section("Tokens and cost per role", "Calls answered from the call cache are not counted again; a cost "
                   "sums the priced calls and counts the calls of endpoints without a price.",
                   table=(["role", "model", "calls", "retries", "prompt tokens", "completion tokens", "cost"],
                          rows))
