"""The study's database: SQLite in WAL mode (stdlib `sqlite3`), one file holding the study and every answer.

Path: `annotate.db_path`, by default `RUN_DIR/annotate/study.sqlite` (with its `-wal` and `-shm` files beside it).
WAL lets every reader run while one writer commits; each save is one short `BEGIN IMMEDIATE` transaction, and a
writer that finds the lock taken waits up to `BUSY_TIMEOUT_MS`, so many annotators saving at once queue for a few
milliseconds instead of failing. Answers are never updated or deleted: a revised answer is a new row with the next
revision, so the table is the full history and the current answer is the highest revision.

Schema (version 1; plain SQL types, so an institution can move it to its own database):

    meta(key TEXT PRIMARY KEY, value TEXT)       schema_version, fingerprint, seed, questions (JSON),
                                                 created_at, admin_token_sha256, judge_ratings, auto_advance
    items(item_id TEXT PRIMARY KEY,              `source::system_a::system_b`, as the judge stage names items
          source_item, system_a, system_b,       the key: which system is which side (never sent to annotators)
          assignment, submission, passage, prompt, feedback_a, feedback_b,   texts, feedback of system_a / _b
          gold TEXT NULL)                        gold items: JSON {question: system name or "tie"}
    annotators(name TEXT PRIMARY KEY, token_sha256 TEXT UNIQUE)     tokens are stored only as hashes
    slots(slot_id TEXT PRIMARY KEY, annotator, position INTEGER,    one entry of an annotator's queue (1-based)
          item_id, shown_order TEXT ('AB' | 'BA'),                  AB: system_a shown as A
          kind TEXT ('regular' | 'repeat' | 'gold'), UNIQUE(annotator, position))
    answers(answer_id INTEGER PRIMARY KEY AUTOINCREMENT, slot_id, annotator, item_id, position,
            shown_order, question, value TEXT, revision INTEGER (1, 2, ...), answered_at TEXT (UTC ISO 8601),
            UNIQUE(slot_id, question, revision))    one row per answer given; `value` as the annotator saw it
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sefl_ray.errors import ConfigError

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_MS = 10_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, source_item TEXT NOT NULL, system_a TEXT NOT NULL, system_b TEXT NOT NULL,
    assignment TEXT NOT NULL, submission TEXT NOT NULL, passage TEXT NOT NULL, prompt TEXT NOT NULL,
    feedback_a TEXT NOT NULL, feedback_b TEXT NOT NULL, gold TEXT);
CREATE TABLE IF NOT EXISTS annotators (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS slots (
    slot_id TEXT PRIMARY KEY, annotator TEXT NOT NULL REFERENCES annotators(name), position INTEGER NOT NULL,
    item_id TEXT NOT NULL REFERENCES items(item_id),
    shown_order TEXT NOT NULL CHECK (shown_order IN ('AB', 'BA')),
    kind TEXT NOT NULL CHECK (kind IN ('regular', 'repeat', 'gold')), UNIQUE (annotator, position));
CREATE TABLE IF NOT EXISTS answers (
    answer_id INTEGER PRIMARY KEY AUTOINCREMENT, slot_id TEXT NOT NULL REFERENCES slots(slot_id),
    annotator TEXT NOT NULL, item_id TEXT NOT NULL, position INTEGER NOT NULL, shown_order TEXT NOT NULL,
    question TEXT NOT NULL, value TEXT NOT NULL, revision INTEGER NOT NULL CHECK (revision >= 1),
    answered_at TEXT NOT NULL, UNIQUE (slot_id, question, revision));
CREATE INDEX IF NOT EXISTS answers_by_slot ON answers (slot_id, question, revision);
CREATE INDEX IF NOT EXISTS answers_by_annotator ON answers (annotator);
"""
# The current answer of each (slot, question) is its highest revision; the correlated subquery reads the index
# answers_by_slot, so a page costs the same with 100 answers in the table or 100 000.
_CURRENT = """SELECT a.* FROM answers a WHERE a.revision = (SELECT MAX(b.revision) FROM answers b
    WHERE b.slot_id = a.slot_id AND b.question = a.question)"""


class StaleRevision(Exception):
    """The answer changed since the client last saw it (a replayed or out-of-date save)."""

    def __init__(self, revision: int, value: str | None):
        super().__init__(f"revision {revision}")
        self.revision, self.value = revision, value


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """The database, one connection per thread (FastAPI runs sync routes in a thread pool)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()

    @property
    def db(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                             check_same_thread=False)
                connection.row_factory = sqlite3.Row
                connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, fast
                connection.execute("PRAGMA foreign_keys = ON")
            except sqlite3.Error as exc:
                raise ConfigError(f"annotate: cannot open the study database {self.path} for writing ({exc}); make "
                                  "the file and its folder writable, or set annotate.db_path") from None
            self._local.connection = connection
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # ---- creating and checking ----

    def create(self, meta: dict[str, str], items: list[dict[str, Any]], tokens: dict[str, str],
               slots: list[dict[str, Any]]) -> None:
        """Write a new study (the file must hold none or one without answers, which is replaced)."""
        db = self.db
        db.executescript(SCHEMA)
        with _transaction(db):
            for table in ("answers", "slots", "annotators", "items", "meta"):
                db.execute(f"DELETE FROM {table}")
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                           [("schema_version", SCHEMA_VERSION), ("created_at", now_utc()), *meta.items()])
            db.executemany("INSERT INTO items VALUES (:item_id, :source_item, :system_a, :system_b, :assignment, "
                           ":submission, :passage, :prompt, :feedback_a, :feedback_b, :gold)", items)
            db.executemany("INSERT INTO annotators VALUES (?, ?)",
                           [(name, token_hash(token)) for name, token in tokens.items()])
            db.executemany("INSERT INTO slots VALUES (:slot_id, :annotator, :position, :item_id, :shown_order, "
                           ":kind)", slots)

    def exists(self) -> bool:
        if not self.path.exists():
            return False
        return self.db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 1

    def check_writable_folder(self) -> None:
        """The database (and the -wal/-shm files WAL keeps beside it) can be created or written here."""
        try:
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"annotate: cannot write the study database {self.path} ({exc}); make the file and "
                              "its folder writable, or set annotate.db_path") from None
        self.check_writable()

    def check_writable(self) -> None:
        """Fail now, in one line, if the database cannot be written (rather than at the first answer)."""
        try:
            with _transaction(self.db):
                self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', ?)", (now_utc(),))
        except sqlite3.Error as exc:
            raise ConfigError(f"annotate: cannot write the study database {self.path} ({exc}); make the file and "
                              "its folder writable, or set annotate.db_path") from None

    # ---- reading the study ----

    def meta(self) -> dict[str, str]:
        return {row["key"]: row["value"] for row in self.db.execute("SELECT key, value FROM meta")}

    def questions(self) -> list[dict[str, Any]]:
        return json.loads(self.meta()["questions"])

    def annotator_for_token(self, token: str) -> str | None:
        """The annotator whose token this is, comparing hashes in constant time against every annotator."""
        digest = token_hash(token)
        found = None
        for row in self.db.execute("SELECT name, token_sha256 FROM annotators"):
            if hmac.compare_digest(digest, row["token_sha256"]):
                found = row["name"]
        return found

    def is_admin_token(self, token: str) -> bool:
        return hmac.compare_digest(token_hash(token), self.meta().get("admin_token_sha256", ""))

    def annotators(self) -> list[str]:
        return [row["name"] for row in self.db.execute("SELECT name FROM annotators ORDER BY name")]

    def slot(self, slot_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM slots WHERE slot_id = ?", (slot_id,)).fetchone()

    def slot_at(self, annotator: str, position: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM slots WHERE annotator = ? AND position = ?",
                               (annotator, position)).fetchone()

    def queue_length(self, annotator: str) -> int:
        return self.db.execute("SELECT count(*) FROM slots WHERE annotator = ?", (annotator,)).fetchone()[0]

    def item(self, item_id: str) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()

    def items(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM items ORDER BY item_id").fetchall()

    def slots(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM slots ORDER BY annotator, position").fetchall()

    # ---- answers ----

    def save_answer(self, slot: sqlite3.Row, question: str, value: str, base_revision: int) -> int:
        """Store `value` as the next revision of (slot, question) if the current revision is `base_revision`
        (0: unanswered); otherwise StaleRevision with what is stored. Returns the new revision."""
        db = self.db
        with _transaction(db):
            row = db.execute("SELECT revision, value FROM answers WHERE slot_id = ? AND question = ? "
                             "ORDER BY revision DESC LIMIT 1", (slot["slot_id"], question)).fetchone()
            current = row["revision"] if row else 0
            if current != base_revision:
                raise StaleRevision(current, row["value"] if row else None)
            db.execute("INSERT INTO answers (slot_id, annotator, item_id, position, shown_order, question, value, "
                       "revision, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (slot["slot_id"], slot["annotator"], slot["item_id"], slot["position"], slot["shown_order"],
                        question, value, current + 1, now_utc()))
        return current + 1

    def slot_answers(self, slot_id: str) -> dict[str, dict[str, Any]]:
        """{question: {"value", "revision"}} of one slot, current revisions only."""
        rows = self.db.execute(f"{_CURRENT} AND a.slot_id = ?", (slot_id,))
        return {row["question"]: {"value": row["value"], "revision": row["revision"]} for row in rows}

    def current_answers(self) -> list[sqlite3.Row]:
        """The current answer of every (slot, question), every annotator."""
        return self.db.execute(f"{_CURRENT} ORDER BY a.annotator, a.position, a.question").fetchall()

    def all_answers(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM answers ORDER BY answer_id").fetchall()

    def count_answers(self) -> int:
        return self.db.execute("SELECT count(*) FROM answers").fetchone()[0]

    def answered_questions(self, annotator: str) -> dict[int, set[str]]:
        """{position: questions answered} of one annotator (current answers, non-empty values)."""
        answered: dict[int, set[str]] = {}
        for row in self.db.execute(f"{_CURRENT} AND a.annotator = ? AND a.value != ''", (annotator,)):
            answered.setdefault(row["position"], set()).add(row["question"])
        return answered

    def last_answer_at(self) -> dict[str, str]:
        return {row[0]: row[1] for row in self.db.execute(
            "SELECT annotator, MAX(answered_at) FROM answers GROUP BY annotator")}


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the write lock is taken up front, so a save never fails
    half-way on a lock held by another writer; it waits for it (busy_timeout) instead."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
