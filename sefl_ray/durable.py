"""Writing outputs so that a kill, a full disk or a failed check never leaves a half file or loses the last good one.

Every file goes to a temporary name beside its target, is flushed and fsynced, and is renamed over the target:
a reader sees the old file or the new one, never a mix (the promise Postgres makes for its own files). A folder
output (an export, a merged model) is built in a staging folder and swapped in only once it is whole and its
caller's checks passed; until then the previous folder stays where it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SET_ASIDE_MARK = ".unreadable-"


def write_bytes(path: str | Path, data: bytes) -> Path:
    with _replacing(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, **dump_options: Any) -> Path:
    """Strict JSON (no NaN or inf: other readers reject them) unless the caller says otherwise."""
    dump_options.setdefault("indent", 2)
    dump_options.setdefault("allow_nan", False)
    return write_text(path, json.dumps(data, **dump_options) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def write_parquet(path: str | Path, table: Any) -> Path:
    import pyarrow.parquet as pq

    with _replacing(path) as temp:
        pq.write_table(table, temp)
    return Path(path)


@contextmanager
def _replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; once the block ends it is fsynced and renamed over `path`. If the
    block (or the disk) fails, the temporary file goes and `path` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_beside(path)
    try:
        yield temp
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


@contextmanager
def replacing_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`. If the block ends normally, the staging folder takes
    `target`'s place; if it raises, the staging folder is removed and `target` is left exactly as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.new-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        swap_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_folder(finished: Path, target: Path) -> None:
    """Put the whole folder `finished` where `target` is. The old `target` is renamed aside first and removed
    only after the new one is in place, so a kill between the two renames leaves it recoverable beside."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        target.rename(old)
    try:
        finished.rename(target)
    except BaseException:
        if old.exists() and not target.exists():
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _sync_folder(target.parent)


def set_aside(path: Path, reason: str, *, shown_as: str | None = None) -> Path:
    """Move an unreadable file out of the way (never delete it: a person may want to look), with a warning that
    says what was wrong and where it went. Its new name no longer ends in its suffix, so no reader finds it."""
    aside = path.with_name(f"{path.name}{SET_ASIDE_MARK}{uuid.uuid4().hex[:6]}")
    path.rename(aside)
    logger.warning("%s is unreadable (%s): set aside as %s, and what it held will be redone", shown_as or path,
                   reason, aside.name)
    return aside


def unreadable_reason(path: Path) -> str | None:
    """Why a JSON or parquet output cannot be read back (cut short, not UTF-8, no footer), or None if it reads."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_bytes().decode("utf-8"))
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_metadata(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    """A rename is durable only once its folder is synced; some filesystems cannot open a folder, and that is ok."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
