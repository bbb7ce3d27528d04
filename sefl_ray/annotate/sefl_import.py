"""`sefl-ray annotate import`: SEFL-style rating spreadsheets into the long form `sefl-ray agreement` reads.

SEFL's experts rated pairs in spreadsheets: one CSV per annotator with the columns Appendix_assignment,
Assignment, Sense, Model A, Model B, Preferred, Comments (often followed by empty columns), and one key CSV
(Assignment, A, B) naming the system behind each side; every annotator saw the same A/B order. How we read them:

- The annotator's name is the file's stem (`annotator1.csv` -> `annotator1`). Encoding UTF-8 (a BOM is fine);
  the delimiter (comma, semicolon or tab) is sniffed from the header. Column names match case- and
  space-insensitively; empty columns are ignored.
- The key's `Assignment` names an item as the annotators' `Appendix_assignment` does (its id); when no key value
  matches any id, it is matched against the `Assignment` text instead (whitespace-normalized).
- `Preferred`: `A`/`Model A`, `B`/`Model B`, or a tie (`tie`, `equal`, `same`, `both`, `neither`, `none`, `=`).
  A row with an empty `Preferred` is unrated and skipped (the log says which); any other value is an error that
  names the file and row. `Sense` and `Comments` are not ratings of the pair and are not part of the long form.
- Each row becomes one rating: item_id `ID::system1::system2` (names sorted, the judge stage's ids), rater,
  rater_kind human, dimension overall, choice as shown, system_a/system_b from the key (as shown), length_a/length_b
  from the Model A/Model B texts when present, order shown.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

from sefl_ray.durable import write_jsonl
from sefl_ray.errors import ConfigError, InputNotFoundError

logger = logging.getLogger(__name__)

_TIES = {"tie", "equal", "same", "both", "neither", "none", "=", "a=b", "no preference"}


def import_sefl(key_path: str | Path, annotator_paths: list[str | Path], out_dir: str | Path) -> Path:
    key_rows = _read_sheet(Path(key_path))
    annotators = {Path(path).stem: _read_sheet(Path(path)) for path in annotator_paths}
    if not annotators:
        raise ConfigError("annotate import: give at least one annotator CSV")
    if len(annotators) != len(annotator_paths):
        raise ConfigError("annotate import: two annotator files share a name (the rater is the file's stem)")
    key = _read_key(Path(key_path), key_rows)
    ratings = []
    for rater, (path, rows) in annotators.items():
        ratings += _ratings_of(rater, path, rows, key)
    out_path = write_jsonl(Path(out_dir) / "ratings.jsonl", ratings)
    logger.info("annotate import: %d ratings by %d annotators -> %s", len(ratings), len(annotators), out_path)
    return out_path


def _read_sheet(path: Path) -> tuple[Path, list[dict[str, str]]]:
    """(path, rows) with normalized column names, empty columns and fully empty rows dropped."""
    if not path.is_file():
        raise InputNotFoundError(f"annotate import: {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the sheet as CSV UTF-8"
                          ) from None
    header = text.splitlines()[0] if text.strip() else ""
    delimiter = max(",;\t", key=header.count)
    try:
        lines = list(csv.reader(text.splitlines(), delimiter=delimiter))
    except csv.Error as exc:
        raise ConfigError(f"{path}: not a readable CSV file ({exc})") from None
    if not lines:
        raise ConfigError(f"{path}: empty file")
    names = [_normalize(name) for name in lines[0]]
    rows = []
    for number, values in enumerate(lines[1:], 1):
        row = {name: value.strip() for name, value in zip(names, values) if name}
        row["_row"] = str(number)
        if any(value for name, value in row.items() if name != "_row"):
            rows.append(row)
    return path, rows


def _normalize(name: str) -> str:
    return re.sub(r"[\s_]+", "_", name.strip().lower())


def _read_key(path: Path, sheet: tuple[Path, list[dict[str, str]]]) -> dict[str, tuple[str, str]]:
    _, rows = sheet
    key = {}
    for row in rows:
        where = f"{path} row {row['_row']}"
        assignment, system_a, system_b = row.get("assignment", ""), row.get("a", ""), row.get("b", "")
        if not assignment or not system_a or not system_b:
            raise ConfigError(f"{where}: the key needs Assignment, A and B (the system behind each side)")
        if system_a == system_b:
            raise ConfigError(f"{where}: A and B are both '{system_a}'; a pair compares two systems")
        if assignment in key:
            raise ConfigError(f"{where}: assignment '{assignment}' is in the key twice")
        key[assignment] = (system_a, system_b)
    if not key:
        raise ConfigError(f"{path}: the key has no rows")
    return key


def _ratings_of(rater: str, path: Path, rows: list[dict[str, str]], key: dict[str, tuple[str, str]]):
    if not rows:
        raise ConfigError(f"{path}: holds no rows under its header; export the annotator's ratings again")
    if "preferred" not in rows[0]:
        raise ConfigError(f"{path}: no 'Preferred' column (columns: Appendix_assignment, Assignment, Sense, "
                          "Model A, Model B, Preferred, Comments)")
    ids = {row.get("appendix_assignment", "") for row in rows}
    by_text = not (ids & set(key))
    texts = {_squash(text): text for text in key} if by_text else {}
    ratings, unrated, seen = [], [], {}
    for row in rows:
        where = f"{path} row {row['_row']}"
        item = row.get("appendix_assignment") or row.get("assignment", "")
        entry = key.get(texts.get(_squash(row.get("assignment", "")), "") if by_text else item)
        if entry is None:
            raise ConfigError(f"{where}: assignment '{item[:60]}' is not in the key")
        if item in seen:
            raise ConfigError(f"{where}: assignment '{item[:60]}' rated twice (also at row {seen[item]})")
        seen[item] = row["_row"]
        choice = _choice(row.get("preferred", ""), where)
        if choice is None:
            unrated.append(row["_row"])
            continue
        system_a, system_b = entry
        rating: dict[str, Any] = {"item_id": f"{item}::{'::'.join(sorted(entry))}", "rater": rater,
                                  "rater_kind": "human", "dimension": "overall", "choice": choice,
                                  "system_a": system_a, "system_b": system_b, "order": "shown"}
        if row.get("model_a") and row.get("model_b"):
            rating.update(length_a=len(row["model_a"]), length_b=len(row["model_b"]))
        ratings.append(rating)
    if unrated:
        logger.warning("annotate import: %s: %d row(s) with no Preferred answer skipped (rows %s)", path,
                       len(unrated), ", ".join(unrated))
    return ratings


def _choice(value: str, where: str) -> str | None:
    text = value.strip().lower()
    if not text:
        return None
    if text in ("a", "model a", "model_a"):
        return "A"
    if text in ("b", "model b", "model_b"):
        return "B"
    if text in _TIES:
        return "tie"
    raise ConfigError(f"{where}: Preferred '{value}' is not A, B or a tie (tie, equal, both, neither)")


def _squash(text: str) -> str:
    return " ".join(text.split())
