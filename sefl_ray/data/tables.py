"""Reading rows from the files users hand a stage: a `datasets` folder, parquet, jsonl, json or csv, one reader."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from sefl_ray.errors import ConfigError, InputNotFoundError


def read_rows(path: Path, *, key: str, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of `path` as dicts. `key` names the config field in error messages; `split` picks a DatasetDict's
    split (None: `train`, else the first)."""
    if not path.exists():
        raise InputNotFoundError(f"{key}: {path} does not exist")
    if path.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split is not None and split not in loaded:
                raise ConfigError(f"{key}: no split '{split}' in {path} (splits: {', '.join(loaded)})")
            name = split if split is not None else ("train" if "train" in loaded else next(iter(loaded)))
            loaded = loaded[name]
        return list(loaded)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        return _read_json(path)
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as lines:
            return list(csv.DictReader(lines))
    raise ConfigError(
        f"{key}: unsupported file type '{path.suffix}' (a datasets folder, .parquet, .jsonl, .json, .csv)"
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
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
