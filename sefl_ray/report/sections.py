"""The section every part of the report is made of, and the few helpers that fill one.

A section is a plain dict, so any module can build one without importing a class:
    {"title": str, "note": str, "table": (header, rows) | None, "plot": PNG bytes | None, "warning": bool}
plus, in the examples part only, "examples": items shown side by side, each {"item_id", "texts": [(kind, heading,
text)], "feedback": [(system, heading, text)], "tables": [(header, rows)], "note"} (see `examples.py`).
Everything in it is plain text: `render.py` escapes it, so a builder never writes markup.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

EMBEDDED_PREFIX = "embedded:"


def section(title: str, note: str, *, table: tuple[list[str], list[list[Any]]] | None = None,
            plot: bytes | None = None, warning: bool = False) -> dict[str, Any]:
    return {"title": title, "note": note, "table": table, "plot": plot, "warning": warning}


def not_run(stage: str, missing: Path, run_dir: Path) -> dict[str, Any]:
    """The one line a part shows when its stage left nothing in the run dir, so the part's heading stays."""
    return section("Not run", f"The {stage} stage has not run here: {_relative(missing, run_dir)} is missing.")


def embedded_note(models_by_role: dict[str, list[str]]) -> str:
    """The plain warning beside the roles the embedded 135M model plays (teacher, student, a judge)."""
    roles_by_model: dict[str, list[str]] = {}
    for role, models in models_by_role.items():
        for model in sorted({m for m in models if m and m.startswith(EMBEDDED_PREFIX)}):
            roles_by_model.setdefault(model, []).append(role)
    return "".join(f"The {' and the '.join(roles)} {'is' if len(roles) == 1 else 'are'} `{model}`: a 135M model "
                   "makes this a smoke test of the machinery, not of feedback quality; real quality comes from real "
                   "endpoints. " for model, roles in sorted(roles_by_model.items()))


def length_row(name: str, lengths: list[int]) -> list[Any]:
    """name, n, min, median, mean, max of a list of lengths."""
    if not lengths:
        return [name, 0, "", "", "", ""]
    return [name, len(lengths), min(lengths), round(statistics.median(lengths)), round(statistics.mean(lengths)),
            max(lengths)]


LENGTH_HEADER = ["text", "n", "min", "median", "mean", "max"]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ci(low: float | None, high: float | None, digits: int = 3) -> str:
    return "n/a" if low is None or high is None else f"{fmt(low, digits)}–{fmt(high, digits)}"


def blank(value: Any) -> Any:
    return "" if value is None else value


def short_path(value: str, run_dir: Path) -> str:
    """A model or file path inside the run dir as `RUN_DIR/...` (the tuned model is `RUN_DIR/train/merged`)."""
    prefix = f"{run_dir}/"
    return "RUN_DIR/" + value[len(prefix):] if value.startswith(prefix) else value


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return f"RUN_DIR/{path.relative_to(run_dir).as_posix()}"
    except ValueError:
        return str(path)
