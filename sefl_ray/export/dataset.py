"""Turn synthesized records into a Hugging Face dataset with the published SEFL dataset's columns, plus a card.

`export_dataset` takes the records the gate ruled on (one row per id), keeps those that passed (`ok`), splits them
into `train` and `valid` by a seeded shuffle of the sorted ids (so the split depends on the seed only, never on file
order), and writes the same `DatasetDict` three ways under the output folder:

    hf/                       `DatasetDict.save_to_disk`, for `datasets.load_from_disk`
    parquet/{split}.parquet   one file per split, what the Hub's dataset viewer and `load_dataset` read
    README.md                 a dataset card: YAML front matter for the Hub, counts, fingerprints, models, usage
    export_summary.json       the card's numbers, for the report and for `export_summary`

The first columns are SEFL's (`assignment`, `prompt`, `completion`, `messages`, `text`, `errors`, `feedback`), so
SEFL's fine-tuning code and ours read either dataset; our own columns follow.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import yaml

from sefl_ray.config import ExportConfig, QuotaConfig, config_fingerprint, redact_secrets
from sefl_ray.data.records import add_role_usage, read_records
from sefl_ray.data.sft import DEFAULT_SYSTEM_PROMPT, render_completion, render_prompt, to_chat_messages
from sefl_ray.durable import replacing_folder, write_json, write_text
from sefl_ray.errors import InputNotFoundError
from sefl_ray.usage import Usage

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid")
SEFL_COLUMNS = ("assignment", "prompt", "completion", "messages", "text", "errors", "feedback")
OWN_COLUMNS = (
    "id", "source_id", "submission", "teacher_model", "student_model", "preset", "config_fingerprint",
)
SUMMARY_FILE = "export_summary.json"

_STRING = datasets.Value("string")
_MESSAGES = datasets.List({"role": _STRING, "content": _STRING})


def export_dataset(
    records: pa.Table,
    out_dir: str | Path,
    export_config: ExportConfig,
    *,
    seed: int = 0,
    dataset_name: str = "sefl-ray synthetic feedback",
    gate_summary: dict[str, Any] | None = None,
    quotas: QuotaConfig | None = None,
) -> Path:
    """Export `records` (one row per id: `read_exportable_records`, or the gate's records.parquet) to `out_dir`
    (see the module docstring); returns `out_dir`. `gate_summary` (the gate's summary.json) and, under
    `quotas` (synth's), the target vs achieved distributions of the exported rows go into the card."""
    out_dir = Path(out_dir)
    statuses = records["status"].to_pylist()
    wanted = {"ok"} | ({"failed"} if export_config.include_failed else set()) | (
        {"filtered"} if export_config.include_filtered else set())
    rows = records.filter(pa.array([status in wanted for status in statuses], type=pa.bool_())).to_pylist()
    if not rows:
        counts = ", ".join(f"{statuses.count(status)} {status}" for status in sorted(set(statuses)))
        reasons = Counter(reason for column in ("error", "gate_reason") if column in records.column_names
                          for reason in records[column].to_pylist() if reason)
        commonest = f"; the commonest reason: {reasons.most_common(1)[0][0][:300]}" if reasons else ""
        raise InputNotFoundError(
            f"none of the {len(statuses)} records is ok ({counts}{commonest}): fix the synthesis or the gates and "
            "run them again, or set export.include_failed=true / export.include_filtered=true to export them anyway"
        )
    if len(rows) < 2:
        raise InputNotFoundError(
            f"only {len(rows)} exportable record of {len(statuses)}: the export needs at least 2, one for train and "
            "one for valid; synthesize more"
        )
    split_ids = split_record_ids([row["id"] for row in rows], export_config, seed=seed)
    system_prompt = export_config.system_prompt or DEFAULT_SYSTEM_PROMPT
    rows_by_id = {row["id"]: row for row in rows}
    features = _features(export_config.include_failed or export_config.include_filtered,
                         "gate" in records.column_names)
    dataset_dict = datasets.DatasetDict(
        {
            split: _build_split([rows_by_id[row_id] for row_id in ids], features, system_prompt)
            for split, ids in split_ids.items()
        }
    )

    summary = _summarize(records, rows, dataset_dict, export_config, seed=seed, dataset_name=dataset_name,
                         gate_summary=gate_summary)
    if quotas is not None and quotas.active():
        from sefl_ray.data.quotas import achieved

        summary["sampling"] = achieved(rows, quotas)
    # The whole export is built beside the old one and swapped in once complete: a failed or killed export
    # leaves the previous dataset as it was, and no shard of it lingers beside the new one.
    with replacing_folder(out_dir) as staging:
        dataset_dict.save_to_disk(str(staging / "hf"))
        (staging / "parquet").mkdir()
        for split, dataset in dataset_dict.items():
            dataset.to_parquet(str(staging / "parquet" / f"{split}.parquet"))
        write_json(staging / SUMMARY_FILE, summary)
        write_text(staging / "README.md", render_dataset_card(summary))
    logger.info(
        "exported %d of %d records to %s (train %d, valid %d; %d failed records %s, %d filtered %s)",
        len(rows), len(statuses), out_dir, summary["splits"]["train"], summary["splits"]["valid"],
        summary["records"]["failed"], "included" if export_config.include_failed else "left out",
        summary["records"]["filtered"], "included" if export_config.include_filtered else "left out",
    )
    return out_dir


def export_summary(out_dir: str | Path) -> dict[str, Any]:
    """The numbers of an export (splits, record counts, fingerprints, models, usage), as `export_dataset` wrote them."""
    path = Path(out_dir) / SUMMARY_FILE
    if not path.is_file():
        raise InputNotFoundError(f"no export under {out_dir} ({SUMMARY_FILE} is missing): run the export first")
    return json.loads(path.read_text())


def split_record_ids(ids: list[str], export_config: ExportConfig, *, seed: int) -> dict[str, list[str]]:
    """Seeded shuffle of the sorted ids: the first `n_valid` go to `valid`, the rest to `train`. Sorting first makes
    the split a function of (ids, seed) only, whatever order the record files were read in. Needs 2 ids or more:
    neither split may be empty (datasets 5.2 saves an empty split that `load_from_disk` cannot read back)."""
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    wanted = max(export_config.min_valid, round(len(shuffled) * export_config.valid_fraction))
    n_valid = min(wanted, len(shuffled) - 1)  # train keeps at least one row
    if n_valid < wanted:
        logger.warning(
            "only %d exportable records: valid gets %d rows instead of %d so that train keeps one",
            len(shuffled), n_valid, wanted,
        )
    return {"train": shuffled[n_valid:], "valid": shuffled[:n_valid]}


def render_errors(errors: list[str] | None) -> str:
    """The student's deliberate mistakes as one text, one per line: `1. …\\n2. …`."""
    return "\n".join(f"{number}. {error}" for number, error in enumerate(errors or [], start=1))


def read_exportable_records(records_dir: str | Path) -> pa.Table:
    """Synth's records under `records_dir`, one row per id, for an export without gates (tests, old run dirs)."""
    records_dir = Path(records_dir)
    if not records_dir.is_dir():
        raise InputNotFoundError(
            f"records folder not found: {records_dir}; run the synthesis stage first or point the export at the "
            "folder holding its parquet files"
        )
    records = read_records(records_dir)
    if records.num_rows == 0:
        raise InputNotFoundError(
            f"no readable records (*.parquet) under {records_dir}; run the synthesis stage first"
        )
    return records


def _features(include_status: bool, gated: bool) -> datasets.Features:
    columns: dict[str, Any] = {name: _STRING for name in (*SEFL_COLUMNS, *OWN_COLUMNS)}
    columns["messages"] = _MESSAGES
    if include_status:
        columns["status"] = _STRING
        if gated:
            columns["gate"] = _STRING
            columns["gate_reason"] = _STRING
    return datasets.Features(columns)


def _build_split(rows: list[dict[str, Any]], features: datasets.Features, system_prompt: str) -> datasets.Dataset:
    columns: dict[str, list[Any]] = {name: [] for name in features}
    for row in rows:
        for name, value in _export_row(row, system_prompt).items():
            if name in columns:
                columns[name].append(value)
    return datasets.Dataset.from_dict(columns, features=features)


def _export_row(row: dict[str, Any], system_prompt: str) -> dict[str, Any]:
    """One record in the export's shape. Failed rows (only with include_failed) may lack fields: they become ''."""
    assignment, submission, feedback = row["assignment"] or "", row["submission"] or "", row["feedback"] or ""
    return {
        "assignment": assignment,
        "prompt": render_prompt(assignment, submission),
        "completion": render_completion(feedback),
        "messages": to_chat_messages(assignment, submission, feedback, system_prompt=system_prompt),
        "text": row["source_text"] or "",
        "errors": render_errors(row["errors"]),
        "feedback": feedback,
        "id": row["id"],
        "source_id": row["source_id"] or "",
        "submission": submission,
        "teacher_model": row["teacher_model"] or "",
        "student_model": row["student_model"] or "",
        "preset": row["preset"] or "",
        "config_fingerprint": row["config_fingerprint"] or "",
        "status": row["status"],
        "gate": row.get("gate") or "",
        "gate_reason": row.get("gate_reason") or "",
    }


def _summarize(
    records: pa.Table,
    rows: list[dict[str, Any]],
    dataset_dict: datasets.DatasetDict,
    export_config: ExportConfig,
    *,
    seed: int,
    dataset_name: str,
    gate_summary: dict[str, Any] | None,
) -> dict[str, Any]:
    statuses = records["status"].to_pylist()
    return {
        "dataset_name": dataset_name,
        "splits": {split: dataset_dict[split].num_rows for split in SPLITS},
        "records": {
            "total": len(statuses),
            "ok": statuses.count("ok"),
            "failed": statuses.count("failed"),
            "filtered": statuses.count("filtered"),
            "exported": len(rows),
        },
        "quality": _quality_numbers(gate_summary),
        "config_fingerprints": sorted({row["config_fingerprint"] for row in rows if row["config_fingerprint"]}),
        "teacher_models": sorted({row["teacher_model"] for row in rows if row["teacher_model"]}),
        "student_models": sorted({row["student_model"] for row in rows if row["student_model"]}),
        "presets": sorted({row["preset"] for row in rows if row["preset"]}),
        "seed": seed,
        "export_config": redact_secrets(export_config.model_dump(mode="json")),
        "export_fingerprint": config_fingerprint({"export": export_config.model_dump(mode="json"), "seed": seed}),
        "usage": _usage_totals(records["usage"].to_pylist()),
        "columns": list(dataset_dict["train"].column_names),
    }


def _sampling_lines(sampling: dict[str, Any] | None) -> list[str]:
    if not sampling:
        return []
    lines = ["## Sampling", "", "What synth's quotas (`synth.quotas`) asked for, and what the exported rows hold:", "",
             "| dimension | value | target | exported | rows |", "| --- | --- | --- | --- | --- |"]
    for dimension, values in sampling.items():
        for value, entry in values.items():
            share = f"{entry['achieved']:.1%}" if entry["achieved"] is not None else ""
            lines.append(f"| {dimension} | {value} | {entry['target']:.1%} | {share} | {entry['count']} |")
    return lines + [""]


def _quality_lines(quality: dict[str, Any] | None) -> list[str]:
    if not quality:
        return []
    lines = ["## Data quality", "", "Each record passed the gates in this order and stopped at the first it failed "
             "(`sefl-ray gate`):", "", "| gate | checked | passed | filtered | pass rate | commonest reason |",
             "| --- | --- | --- | --- | --- | --- |"]
    for gate, entry in quality["gates"].items():
        reasons = sorted(entry["reasons"].items(), key=lambda item: -item[1])
        top = f"{reasons[0][0]} ({reasons[0][1]})" if reasons else ""
        rate = f"{entry['pass_rate']:.1%}" if entry["pass_rate"] is not None else ""
        lines.append(f"| {gate} | {entry['checked']} | {entry['passed']} | {entry['filtered']} | {rate} | {top} |")
    lines += ["", f"Near-duplicates: {quality['duplicates_removed']} record(s) removed from "
              f"{quality['duplicate_clusters']} cluster(s), the smallest id of each kept.", ""]
    return lines


def _quality_numbers(gate_summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the card says of the gates: pass rate and reasons per gate, duplicates removed."""
    if gate_summary is None:
        return None
    return {"gates": {gate: {key: entry[key] for key in ("checked", "passed", "filtered", "pass_rate", "reasons")}
                      for gate, entry in gate_summary["gates"].items()},
            "duplicates_removed": gate_summary["duplicates"]["removed"],
            "duplicate_clusters": gate_summary["duplicates"]["clusters"]}


def _usage_totals(usage_lists: list[list[dict[str, Any]] | None]) -> list[dict[str, Any]]:
    """Calls, tokens and cost per (role, model), over every record read, failed ones included (they cost too)."""
    totals: dict[tuple[str, str], Usage] = defaultdict(Usage)
    for usage in usage_lists:
        for entry in usage or []:
            add_role_usage(totals[(entry["role"] or "?", entry["model"] or "?")], entry)
    return [{"role": role, "model": model, **total.to_dict()} for (role, model), total in sorted(totals.items())]


def render_dataset_card(summary: dict[str, Any]) -> str:
    """README.md for the export folder: YAML front matter the Hub reads (license, task, `configs` pointing at the
    parquet files), then what the data is, where it came from and what it cost."""
    exported = sum(summary["splits"].values())
    front_matter = {
        "pretty_name": summary["dataset_name"],
        "license": summary["export_config"]["license"],
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "education", "feedback", "sefl", "sefl-ray"],
        "size_categories": [_size_category(exported)],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"parquet/{split}.parquet"} for split in SPLITS],
            }
        ],
    }
    records, config = summary["records"], summary["export_config"]
    lines = [
        "---",
        yaml.safe_dump(front_matter, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {summary['dataset_name']}",
        "",
        "Synthetic educational feedback in the shape of the SEFL dataset (Synthetic Educational Feedback Loops): "
        "a teacher model writes an assignment from a source passage, a student model answers it with deliberate "
        "mistakes, and the teacher gives feedback on each mistake. Every row was synthesized by sefl-ray; no real "
        "student wrote any of it. The feedback is only as good as the models that wrote it: check it before use.",
        "",
        "## Splits",
        "",
        "| split | rows |",
        "| --- | --- |",
        *(f"| {split} | {count} |" for split, count in summary["splits"].items()),
        "",
        f"Split by a seeded shuffle of the sorted record ids (seed {summary['seed']}, valid fraction "
        f"{config['valid_fraction']}, at least {config['min_valid']} valid row(s)); export fingerprint "
        f"`{summary['export_fingerprint']}`.",
        "",
        "## Records",
        "",
        f"{records['total']} records were synthesized and gated: {records['ok']} passed every gate, "
        f"{records.get('filtered', 0)} were filtered by a quality gate, {records['failed']} failed. "
        f"{records['exported']} were exported: "
        + ("those that passed" if not (config["include_failed"] or config.get("include_filtered"))
           else "those that passed, plus " + " and ".join(
               kind for kind, flag in (("failed", "include_failed"), ("filtered", "include_filtered"))
               if config.get(flag)) + " ones (see the `status` column)")
        + ".",
        "",
        *_quality_lines(summary.get("quality")),
        *_sampling_lines(summary.get("sampling")),
        "Synthesis config fingerprint(s): " + _code_list(summary["config_fingerprints"]) + ".",
        "",
        "- Teacher model(s): " + _code_list(summary["teacher_models"]),
        "- Student model(s): " + _code_list(summary["student_models"]),
        "- Prompt preset(s): " + _code_list(summary["presets"]),
        "",
        "## Usage",
        "",
        "Tokens and cost of the synthesis, summed from the records' `usage` column (failed records included; a "
        "retried record counts its last try only).",
        "",
        "| role | model | calls | retries | prompt tokens | completion tokens | cost (USD) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(_usage_row(entry) for entry in summary["usage"]),
        "",
        "## Columns",
        "",
        "The first columns are the published SEFL dataset's, so SEFL's fine-tuning code reads this dataset as is:",
        "",
        "- `assignment`: the teacher's task; `text`: the source passage it came from",
        "- `prompt`: the user turn, `### ASSIGNMENT:\\n…\\n\\n### ANSWER:\\n…`",
        "- `completion`: the assistant turn, `### FEEDBACK: …`",
        "- `messages`: the same as chat messages (system, user, assistant)",
        "- `errors`: the student's deliberate mistakes, one per line; `feedback`: the teacher's feedback",
        "",
        "Then sefl-ray's own: " + _code_list(
            [column for column in summary["columns"] if column not in SEFL_COLUMNS]
        ) + ".",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset, load_from_disk",
        "",
        'dataset = load_dataset("parquet", data_files={"train": "parquet/train.parquet", '
        '"valid": "parquet/valid.parquet"})',
        'dataset = load_from_disk("hf")  # the same rows, as saved by datasets',
        "```",
        "",
    ]
    return "\n".join(lines)


def _usage_row(entry: dict[str, Any]) -> str:
    usage = Usage.from_dict(entry)
    return (f"| {entry['role']} | `{entry['model']}` | {usage.calls} | {usage.retries} | {usage.prompt_tokens} | "
            f"{usage.completion_tokens} | {usage.cost_text()} |")


def _code_list(values: list[str]) -> str:
    return ", ".join(f"`{value}`" for value in values) if values else "none"


def _size_category(n: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"
