"""Educational texts to synthesize from: files, `datasets` folders, Hub datasets, or the corpus shipped here."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from sefl_ray.config import SourcesConfig
from sefl_ray.errors import ConfigError, InputNotFoundError

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "corpus"


def load_sources(config: SourcesConfig) -> list[dict[str, str]]:
    """Passages as `{source_id, source_text}`, filtered by length, in a stable order.

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
        sources.append({"source_id": source_id, "source_text": text})
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
        return _read_jsonl(builtin)
    if path.startswith("hf:"):
        import datasets

        name, _, split = path[3:].partition(":")
        return list(datasets.load_dataset(name, split=split or "train"))
    local = Path(path)
    if not local.exists():
        raise InputNotFoundError(f"synth.sources.path: {path} does not exist")
    if local.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
        return list(loaded)
    if local.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(local).to_pylist()
    if local.suffix in (".jsonl", ".json"):
        return _read_jsonl(local) if local.suffix == ".jsonl" else _read_json(local)
    raise ConfigError(f"synth.sources.path: unsupported file type '{local.suffix}' (use .jsonl, .json, .parquet)")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    return rows


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of objects")
    return data
