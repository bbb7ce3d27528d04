"""What a study is made of: each system's feedback per item (infer outputs or files by path) and each item's
context (the assignment, the student's answer and the source passage), joined by item id."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from sefl_ray.config import SeflConfig
from sefl_ray.data.tables import read_rows
from sefl_ray.errors import ConfigError, InputNotFoundError
from sefl_ray.layout import RunLayout

logger = logging.getLogger(__name__)

_PROMPT = re.compile(r"^\s*### ASSIGNMENT:\s*\n(?P<assignment>.*?)\n\s*\n### ANSWER:\s*\n(?P<submission>.*)$", re.S)


def load_feedback(config: SeflConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """{system: {item_id: row}} of the ok rows with feedback; rows keep any context columns they carry."""
    settings = config.annotate
    layout = RunLayout(config.run_dir)
    paths = [Path(p) for p in settings.inputs] or layout.all_infer_outputs()
    if not paths:
        raise InputNotFoundError(f"annotate: no system outputs in {layout.infer_dir} (run `sefl-ray "
                                 "infer` for each system, or list files in annotate.inputs)")
    systems: dict[str, dict[str, dict[str, Any]]] = {}
    for path in paths:
        rows = read_rows(path, key="annotate.inputs", allow_empty=False)
        missing = {"item_id", "feedback"} - set(rows[0] if rows else {})
        if missing:
            raise ConfigError(f"annotate.inputs: {path} lacks column(s) {', '.join(sorted(missing))}")
        for row in rows:
            if row.get("status", "ok") != "ok" or not row.get("feedback"):
                continue
            name = path.parent.name if path.name == "outputs.parquet" else str(row.get("system") or "")
            if not name:
                raise ConfigError(f"annotate.inputs: {path} rows need a `system` column naming the system")
            systems.setdefault(name, {})[str(row["item_id"])] = row
    if settings.systems:
        unknown = sorted(set(settings.systems) - set(systems))
        if unknown:
            raise ConfigError(f"annotate.systems: {', '.join(unknown)} not found (systems: {', '.join(systems)})")
        systems = {name: systems[name] for name in settings.systems}
    if len(systems) < 2:
        raise InputNotFoundError(f"annotate needs the outputs of at least two systems (found: "
                                 f"{', '.join(systems) or 'none'})")
    return systems


def load_context(config: SeflConfig) -> dict[str, dict[str, str]]:
    """{item_id: {"assignment", "submission", "passage"}} from the test set, keyed as infer keys its rows."""
    settings = config.annotate
    path = Path(settings.context or config.infer.input or RunLayout(config.run_dir).export_hf)
    if not path.exists():
        if settings.context:
            raise InputNotFoundError(f"annotate.context: {path} does not exist")
        logger.info("annotate: no test set at %s; items show the assignment and answer read from the prompt", path)
        return {}
    rows = read_rows(path, key="annotate.context", split=config.infer.split if path.is_dir() else None,
                     allow_empty=False)
    return {str(row.get("id", index)): _context_of(row) for index, row in enumerate(rows)}


def item_context(item_id: str, rows: list[dict[str, Any]], context: dict[str, dict[str, str]]) -> dict[str, str]:
    """The item's context: its own columns first, then the test set, then the prompt taken apart."""
    for row in rows:
        if row.get("assignment") and row.get("submission"):
            return _context_of(row)
    if item_id in context:
        return context[item_id]
    prompt = next((row.get("prompt") for row in rows if row.get("prompt")), "") or ""
    match = _PROMPT.match(prompt)
    if match:
        return {"assignment": match["assignment"].strip(), "submission": match["submission"].strip(), "passage": ""}
    return {"assignment": prompt, "submission": "", "passage": ""}


def _context_of(row: dict[str, Any]) -> dict[str, str]:
    passage = row.get("passage") or row.get("text") or row.get("source_text") or ""
    return {"assignment": str(row.get("assignment") or ""), "submission": str(row.get("submission") or ""),
            "passage": str(passage)}
