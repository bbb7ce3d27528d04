"""The Data quality part: what the gates let through, from `gate/summary.json`, and what synth's quotas dealt.

Pass rate per gate in the order they ran (a record stops at the first it fails, so each gate is checked on what the
ones before it passed), the reasons, and the largest near-duplicate clusters with their kept record beside the
removed ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sefl_ray.layout import RunLayout
from sefl_ray.report.sections import fmt, not_run, read_json, section


def quality_sections(run_dir: Path) -> list[dict[str, Any]]:
    layout = RunLayout(run_dir)
    if not layout.gate_summary.exists():
        return [not_run("gate", layout.gate_summary, run_dir)]
    summary = read_json(layout.gate_summary)
    gates = summary["gates"]
    note = (f"{summary['records']} planned records: {summary['passed']} passed every gate, {summary['filtered']} "
            f"were filtered (kept, marked `filtered`), {summary['failed']} failed (in synth, or a gate's call). "
            "Each gate is checked on the records the gates before it passed.")
    parts = [section("Gates", note, table=(
        ["gate", "checked", "passed", "filtered", "pass rate"],
        [[gate, entry["checked"], entry["passed"], entry["filtered"],
          fmt(entry["pass_rate"], 3) if entry["pass_rate"] is not None else ""] for gate, entry in gates.items()]))]
    reasons = [[gate, reason, count] for gate, entry in gates.items()
               for reason, count in sorted(entry["reasons"].items(), key=lambda item: -item[1])]
    if reasons:
        parts.append(section("Why records were filtered", "Numbers and ids in a reason are shown as N and <id>.",
                             table=(["gate", "reason", "records"], reasons)))
    quotas = read_json(layout.synth_summary).get("quotas") if layout.synth_summary.exists() else None
    if quotas:
        rows = [[dimension, value, fmt(entry["target"], 3), fmt(entry["achieved"], 3),
                 fmt(quotas["ok"].get(dimension, {}).get(value, {}).get("achieved"), 3)]
                for dimension, values in quotas["planned"].items() for value, entry in values.items()]
        parts.append(section("Sampling", "What synth.quotas asked for, what the plan dealt, and what the ok "
                             "records hold (failed conversations take their share with them).",
                             table=(["dimension", "value", "target", "planned", "ok records"], rows)))
    duplicates = summary["duplicates"]
    if duplicates["clusters"]:
        rows = [[example["kept"]["id"], example["kept"]["assignment"][:120],
                 ", ".join(f"{member['id']} ({member['similarity']:.2f})" for member in example["removed"])]
                for example in duplicates["examples"]]
        parts.append(section(
            "Near-duplicates", f"{duplicates['removed']} record(s) removed from {duplicates['clusters']} cluster(s); "
            "each cluster keeps its smallest id. The largest clusters:",
            table=(["kept", "its assignment", "removed (similarity)"], rows)))
    return parts
