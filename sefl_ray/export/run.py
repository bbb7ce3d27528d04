"""`sefl-ray export`: the gated records (RUN_DIR/gate/records.parquet) in, `RUN_DIR/export` out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sefl_ray.config import SeflConfig
from sefl_ray.data.records import GATED_RECORD_SCHEMA
from sefl_ray.errors import InputNotFoundError
from sefl_ray.export.dataset import export_dataset
from sefl_ray.layout import RunLayout


def run_export(config: SeflConfig) -> Path:
    """The records the gate ruled on: those synth planned for this config, each passed, filtered or failed."""
    layout = RunLayout(config.run_dir)
    if not layout.gate_records.is_file():
        raise InputNotFoundError(f"{layout.gate_records} not found: run the gate stage first (`sefl-ray gate "
                                 "CONFIG`; it rules on the records synth made, and export exports those that pass)")
    try:
        records = pq.read_table(layout.gate_records, schema=GATED_RECORD_SCHEMA)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputNotFoundError(f"{layout.gate_records} is unreadable ({str(exc).splitlines()[0]}): run the gate "
                                 "stage again (its model calls are cached, so it pays for none twice)") from None
    gate_summary = json.loads(layout.gate_summary.read_text()) if layout.gate_summary.is_file() else None
    return export_dataset(records, layout.export_dir, config.export, seed=config.seed, gate_summary=gate_summary,
                          quotas=config.synth.quotas)


def manifest_numbers(layout: RunLayout) -> dict[str, Any]:
    summary = json.loads(layout.export_summary.read_text())
    return {"rows": summary["records"]["exported"], "splits": summary["splits"]}
