"""The Inference part: what each system (the base model, the tuned one, any other) wrote on the test set, from
`infer/<system>/outputs.parquet`, `summary.json` and `config.yaml`: rows, failures, and how long the feedback is.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from sefl_ray.layout import RunLayout
from sefl_ray.report import plots
from sefl_ray.report.sections import LENGTH_HEADER, fmt, length_row, not_run, read_json, section, short_path

SYSTEM_ORDER = ("base", "tuned")


def system_names(layout: RunLayout) -> list[str]:
    """Every system with outputs, base and tuned first, the rest by name."""
    names = [path.parent.name for path in layout.all_infer_outputs()]
    return sorted(names, key=lambda name: (SYSTEM_ORDER.index(name) if name in SYSTEM_ORDER else len(SYSTEM_ORDER),
                                           name))


def read_outputs(layout: RunLayout, name: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(layout.infer_outputs(name)).to_pylist()


def inference_sections(run_dir: Path) -> list[dict[str, Any]]:
    layout = RunLayout(run_dir)
    names = system_names(layout)
    if not names:
        return [not_run("infer", layout.infer_outputs("<system>"), run_dir)]
    outputs = {name: read_outputs(layout, name) for name in names}
    lengths = {name: [len(r["feedback"] or "") for r in rows if r["status"] == "ok"] for name, rows in outputs.items()}
    sections = [
        section("Systems", _paired_note(outputs), table=_systems_table(run_dir, outputs)),
        section("Feedback lengths", "Characters of each system's feedback (ok rows).",
                table=(["system", *LENGTH_HEADER[1:]], [length_row(name, lengths[name]) for name in names]),
                plot=plots.overlaid_histograms(lengths, xlabel="feedback length (characters)")),
    ]
    failed = [[name, r["item_id"], (r["error"] or "")[:400]] for name, rows in outputs.items() for r in rows
              if r["status"] != "ok"]
    if failed:
        sections.append(section("Failed rows", "Rows a system could not answer, with the reason.",
                                table=(["system", "item", "error"], failed)))
    return sections


def _systems_table(run_dir: Path, outputs: dict[str, list[dict]]) -> tuple[list[str], list[list[Any]]]:
    layout = RunLayout(run_dir)
    rows = []
    for name, items in outputs.items():
        ok = [r for r in items if r["status"] == "ok"]
        cap = _max_new_tokens(layout.infer_system_dir(name) / "config.yaml")
        at_cap = (f"{sum(r['completion_tokens'] >= cap for r in ok)} of {len(ok)}" if cap and ok else "n/a")
        summary_path = layout.infer_summary(name)
        summary = read_json(summary_path) if summary_path.exists() else {}
        models = sorted({short_path(r["model"], run_dir) for r in items if r["model"]})
        rows.append([name, ", ".join(models), summary.get("mode", ""), len(items), len(ok), len(items) - len(ok),
                     fmt(statistics.mean(r["completion_tokens"] for r in ok), 1) if ok else "n/a",
                     "" if cap is None else cap, at_cap, summary.get("elapsed_s", "")])
    header = ["system", "model", "mode", "rows", "ok", "failed", "completion tokens (mean)", "max new tokens",
              "stopped at the cap", "seconds"]
    return header, rows


def _paired_note(outputs: dict[str, list[dict]]) -> str:
    """Base against tuned (or the first two systems): the mean length difference on the items both answered."""
    note = "Each system generated feedback for the same held-out items. "
    if len(outputs) < 2:
        return note
    first, second = list(outputs)[:2]
    by_item = [{r["item_id"]: len(r["feedback"] or "") for r in outputs[name] if r["status"] == "ok"}
               for name in (first, second)]
    shared = sorted(set(by_item[0]) & set(by_item[1]))
    if not shared:
        return note + f"{first} and {second} share no answered item."
    diff = statistics.mean(by_item[1][item] - by_item[0][item] for item in shared)
    longer = sum(by_item[1][item] > by_item[0][item] for item in shared)
    return note + (f"On the {len(shared)} items both answered, {second}'s feedback is on average {diff:+.0f} "
                   f"characters against {first}'s, and longer on {longer} of them.")


def _max_new_tokens(config_path: Path) -> int | None:
    if not config_path.exists():
        return None
    import yaml

    try:
        return (yaml.safe_load(config_path.read_text()) or {}).get("infer", {}).get("max_new_tokens")
    except (yaml.YAMLError, AttributeError):
        return None
