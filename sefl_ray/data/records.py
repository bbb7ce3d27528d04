"""The synthesized record: one row per conversation, `ok` or `failed`, never dropped, keyed by a stable id.

Synthesis writes records as parquet files under `RUN_DIR/synth/records/`; a resumed run adds files beside the old
ones, so a row for the same id may appear twice (a failed try, then an ok one). `read_records` is the one reader:
it keeps the best row per id (ok over failed, newest first), which is what every consumer should see.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sefl_ray.durable import set_aside
from sefl_ray.usage import Usage

logger = logging.getLogger(__name__)

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
USAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("endpoint", pa.string()),
        ("model", pa.string()),
        ("calls", pa.int64()),
        ("retries", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
    ]
)
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),                        # stable hash of (source id, sample index, config fingerprint)
        ("source_id", pa.string()),
        ("source_text", pa.string()),
        ("sample_index", pa.int64()),
        ("preset", pa.string()),                    # prompt preset: "default" or "sefl"
        ("assignment", pa.string()),                # the teacher's task, as the student saw it
        ("submission", pa.string()),                # the student's answer, with deliberate mistakes
        ("errors", pa.list_(pa.string())),          # the mistakes the student says it made, one per item
        ("mistake_kinds", pa.list_(pa.string())),   # the kinds of mistake it was asked to make
        ("subject", pa.string()),                   # what synth.quotas dealt (null when not controlled)
        ("level", pa.string()),
        ("language", pa.string()),
        ("feedback", pa.string()),                  # the teacher's feedback, rendered as one text
        ("feedback_items", pa.list_(pa.string())),  # the feedback on each mistake, in the student's order
        ("messages", pa.list_(MESSAGE_TYPE)),       # the whole conversation, as the agents saw it
        ("teacher_model", pa.string()),
        ("student_model", pa.string()),
        ("usage", pa.list_(USAGE_TYPE)),            # one entry per role
        ("status", pa.string()),                    # "ok" or "failed"
        ("error", pa.string()),                     # why a row failed; null when ok
        ("raw", pa.string()),                       # the unparseable model output of a failed row, kept for debugging
        ("config_fingerprint", pa.string()),
        ("finished_at", pa.float64()),              # unix time; the newest row of an id wins among equals
    ]
)
# One gate's ruling on one record (`sefl-ray gate`): `details` is JSON (e.g. coverage's mistake -> feedback map).
GATE_VERDICT_TYPE = pa.struct([("gate", pa.string()), ("passed", pa.bool_()), ("reason", pa.string()),
                               ("rationale", pa.string()), ("details", pa.string())])
# What the gate stage writes and export reads: the records with every verdict; `status` is "filtered" for a record
# a gate kept out (`gate`, `gate_reason` say which and why), "failed" when synth or a gate's call failed.
GATED_RECORD_SCHEMA = RECORD_SCHEMA.append(pa.field("gate_verdicts", pa.list_(GATE_VERDICT_TYPE))) \
    .append(pa.field("gate", pa.string())).append(pa.field("gate_reason", pa.string()))


def record_id(source_id: str, sample_index: int, config_fingerprint: str) -> str:
    key = f"{source_id}\x1f{sample_index}\x1f{config_fingerprint}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def read_records(records_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every record under `records_dir`, one row per id (ok beats failed, then newest). An unreadable file, such
    as one cut short by a bad disk, is set aside with a warning: its rows are simply done again on resume.
    `columns` reads only those (plus what de-duplication needs), which keeps a large run's summary cheap."""
    tables = list(iter_record_tables(records_dir, columns))
    return pa.concat_tables(tables) if tables else _schema(columns).empty_table()


def iter_record_tables(records_dir: str | Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The rows `read_records` returns, one file's worth at a time, so a caller that only aggregates (the synth
    summary) never holds a whole large run in memory."""
    paths, kept = _rows_to_keep(Path(records_dir))
    schema = _schema(columns)
    for index, path in enumerate(paths):
        if index in kept:
            yield pq.read_table(path, schema=schema, columns=schema.names).take(sorted(kept[index]))


def _rows_to_keep(records_dir: Path) -> tuple[list[Path], dict[int, list[int]]]:
    """(readable files, {file index: indices of its rows to keep}), reading only the columns that decide it."""
    keys = _schema([])
    paths: list[Path] = []
    best: dict[str, tuple[tuple[bool, float], int, int]] = {}
    for path in sorted(records_dir.rglob("*.parquet")) if records_dir.exists() else []:
        try:
            table = pq.read_table(path, schema=keys, columns=keys.names)
        except (OSError, ValueError, pa.ArrowException) as exc:  # cut short (an old writer, a bad disk): its rows are redone
            set_aside(path, str(exc).splitlines()[0])
            continue
        paths.append(path)
        rows = zip(table["id"].to_pylist(), table["status"].to_pylist(), table["finished_at"].to_pylist())
        for row_index, (row_id, status, finished) in enumerate(rows):
            rank = (status == "ok", finished or 0.0)
            if row_id not in best or rank > best[row_id][0]:
                best[row_id] = (rank, len(paths) - 1, row_index)
    kept: dict[int, list[int]] = {}
    for _, file_index, row_index in best.values():
        kept.setdefault(file_index, []).append(row_index)
    return paths, kept


def past_attempts(records_dir: str | Path) -> tuple[Usage, Counter[str]]:
    """What every attempt recorded under `records_dir` cost, and how many attempts of each id failed. Every row of
    every file counts, not one per id: a failed attempt that an ok one replaced was paid for too."""
    spent, failures = Usage(), Counter()
    schema = _schema(["usage"])
    for path in sorted(Path(records_dir).rglob("*.parquet")) if Path(records_dir).exists() else []:
        try:
            rows = pq.read_table(path, schema=schema, columns=schema.names).to_pylist()
        except (OSError, ValueError, pa.ArrowException):
            continue  # `read_records` sets such a file aside
        for row in rows:
            failures[row["id"]] += row["status"] != "ok"
            for entry in row["usage"] or []:
                add_role_usage(spent, entry)
    return spent, failures


def _schema(columns: list[str] | None) -> pa.Schema:
    if columns is None:
        return RECORD_SCHEMA
    wanted = dict.fromkeys(["id", "status", "finished_at", *columns])
    return pa.schema([RECORD_SCHEMA.field(name) for name in wanted])


def add_role_usage(usage: Usage, entry: dict[str, Any]) -> Usage:
    """One record's `usage` entry (a role's calls in one conversation, all to one endpoint) into `usage`."""
    return usage.add_calls(prompt_tokens=entry["prompt_tokens"], completion_tokens=entry["completion_tokens"],
                           cost_usd=entry["cost_usd"], calls=entry["calls"], retries=entry["retries"])
