"""Educational texts to synthesize from: files, `datasets` folders, Hub datasets, or the corpus shipped here."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from sefl_ray.config import SourcesConfig
from sefl_ray.data.tables import read_jsonl, read_rows
from sefl_ray.errors import ConfigError, InputNotFoundError

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "corpus"


def load_sources(config: SourcesConfig) -> list[dict[str, str]]:
    """Passages as `{source_id, source_text, subject}`, filtered by length, in a stable order.

    Sources are read into the driver: they are small next to what synthesis makes of them (thousands of passages),
    and a fixed order is what makes row ids, and so resume, deterministic.
    """
    rows = _read_rows(config.path)
    sources, seen = [], set()
    for row in rows:
        if config.text_column not in row:
            raise ConfigError(
                f"synth.sources.text_column: no column '{config.text_column}' in {config.path} "
                f"(columns: {', '.join(sorted(row))})"
            )
        text = str(row[config.text_column] or "").strip()
        if not config.min_chars <= len(text) <= config.max_chars:
            continue
        raw_id = row.get(config.id_column) if config.id_column else None
        source_id = str(raw_id) if raw_id not in (None, "") else hashlib.sha256(text.encode()).hexdigest()[:16]
        if source_id in seen:
            continue
        seen.add(source_id)
        subject = row.get(config.subject_column) if config.subject_column else None
        sources.append({"source_id": source_id, "source_text": text,
                        "subject": str(subject) if subject not in (None, "") else None})
        if config.limit and len(sources) >= config.limit:
            break
    if not sources:
        raise InputNotFoundError(
            f"no passages in {config.path} between {config.min_chars} and {config.max_chars} characters "
            "(change synth.sources.min_chars/max_chars or the path)"
        )
    logger.info("%d source passages from %s", len(sources), config.path)
    return sources


def _read_rows(path: str) -> list[dict[str, Any]]:
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        builtin = BUILTIN_DIR / f"{name}.jsonl"
        if not builtin.is_file():
            known = ", ".join(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))
            raise ConfigError(f"synth.sources.path: no built-in corpus '{name}' (known: {known})")
        return read_jsonl(builtin)
    if path.startswith("hf:"):
        import datasets

        name, _, split = path[3:].partition(":")
        return list(datasets.load_dataset(name, split=split or "train"))
    return read_rows(Path(path), key="synth.sources.path", allow_empty=False)
