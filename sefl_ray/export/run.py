"""`sefl-ray export`: the records synth planned for this config (its `plan.jsonl`) in, `RUN_DIR/export` out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sefl_ray.config import SeflConfig
from sefl_ray.data.tables import read_jsonl
from sefl_ray.errors import InputNotFoundError
from sefl_ray.export.dataset import export_dataset
from sefl_ray.layout import RunLayout


def run_export(config: SeflConfig) -> Path:
    """Only the rows the current synth config planned: a run dir may also hold records of an earlier config."""
    layout = RunLayout(config.run_dir)
    if not layout.synth_plan.is_file():
        raise InputNotFoundError(f"{layout.synth_plan} not found: run the synth stage first (it writes the plan "
                                 "of the rows it makes, and export exports those; on a run dir made before the "
                                 "plan existed, running synth again writes it and calls nothing for rows that "
                                 "are done)")
    planned = {plan["id"] for plan in read_jsonl(layout.synth_plan)}
    return export_dataset(layout.synth_records, layout.export_dir, config.export, seed=config.seed,
                          only_ids=planned)


def manifest_numbers(layout: RunLayout) -> dict[str, Any]:
    summary = json.loads(layout.export_summary.read_text())
    return {"rows": summary["records"]["exported"], "splits": summary["splits"]}
