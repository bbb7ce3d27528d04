"""Reading rows from the files users hand a stage: a `datasets` folder, parquet, jsonl, json or csv, one reader."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from sefl_ray.errors import ConfigError, InputNotFoundError


def read_rows(path: Path, *, key: str, split: str | None = None, allow_empty: bool = True) -> list[dict[str, Any]]:
    """Rows of `path` as dicts. `key` names the config field in error messages; `split` picks a DatasetDict's
    split (None: `train`, else the first). A file that does not read (a parquet file cut short, text that is not
    UTF-8, a broken CSV) is a `ConfigError` naming it; so is one with no rows unless `allow_empty`. Text files
    may start with a UTF-8 byte-order mark (spreadsheets save CSVs with one): it is not part of the first column."""
    if not path.exists():
        raise InputNotFoundError(f"{key}: {path} does not exist")
    try:
        rows = _read(path, key, split)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{key}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
                          ) from None
    except csv.Error as exc:
        raise ConfigError(f"{key}: {path} is not a readable CSV file ({exc})") from None
    if not rows and not allow_empty:
        raise ConfigError(f"{key}: {path} holds no rows")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ConfigError(f"{key}: {path} row {number} is a {type(row).__name__}, not an object of columns")
    return rows


def _read(path: Path, key: str, split: str | None) -> list[dict[str, Any]]:
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
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:  # cut short, no footer, not parquet at all
            reason = str(exc).splitlines()[0].split(": ", 1)[-1] if str(exc) else type(exc).__name__
            raise ConfigError(f"{key}: {path} is not a readable parquet file ({reason})") from None
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        return _read_json(path)
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as lines:
            return list(csv.DictReader(lines))
    raise ConfigError(
        f"{key}: unsupported file type '{path.suffix}' (a datasets folder, .parquet, .jsonl, .json, .csv)"
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8-sig") as lines:
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
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of objects")
    return data
