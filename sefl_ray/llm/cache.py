"""A call cache on disk, so a re-run (after a crash, a kill, or to re-score) pays for no call twice.

Each process appends to its own JSONL shard and flushes every line, so a killed run keeps everything it was
answered; a process reads every shard once when it starts. Keys hash the endpoint (its name, base_url and model)
and the full request, so a changed prompt or sampling parameter is a miss, the same request with the same seed is a
hit, and two endpoints that serve a model of the same name (`gpt-4o` at two vendors, two vLLM servers) never get
each other's answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def request_key(endpoint: dict[str, str], messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """`endpoint`: {"name", "base_url", "model"}, the identity of who answers."""
    canonical = json.dumps({"endpoint": endpoint, "messages": messages, "params": params}, sort_keys=True,
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class CallCache:
    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        self._entries: dict[str, dict[str, Any]] | None = None
        self._read_up_to: dict[Path, int] = {}  # per shard, the bytes already read
        self._lock = threading.Lock()
        self._shard = None
        self._broken = False

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            if self._entries is None:
                self._entries = {}
                self._read_new_lines()
            elif key not in self._entries:  # another actor (one since killed, say) may have paid for it meanwhile
                self._read_new_lines()
            return self._entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Keep an answer. A cache that cannot be written (a full disk, a folder it may not write) warns once and
        keeps answers in memory only: the call is paid for, so its row goes on rather than failing."""
        line = json.dumps({"key": key, "value": value}, ensure_ascii=False)
        with self._lock:
            if self._entries is not None:
                self._entries[key] = value
            if self._broken:
                return
            try:
                if self._shard is None:
                    self.cache_dir.mkdir(parents=True, exist_ok=True)
                    name = f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}.jsonl"
                    self._shard = open(self.cache_dir / name, "a", encoding="utf-8")
                self._shard.write(line + "\n")
                self._shard.flush()
            except (OSError, UnicodeError) as exc:
                self._broken = True
                logger.warning("call cache %s cannot be written (%s): answers from here on are not kept, and a "
                               "re-run pays for them again", self.cache_dir, exc)

    def _read_new_lines(self) -> None:
        """Every complete line the shards gained since the last read. A damaged line (cut short by a kill, not
        UTF-8, not an entry) is skipped with a warning, and that call is simply asked again. The shards stay where
        they are: every actor of a run reads them at once, so none of them may move one."""
        for shard in sorted(self.cache_dir.glob("*.jsonl")) if self.cache_dir.exists() else []:
            start = self._read_up_to.get(shard, 0)
            try:
                with open(shard, "rb") as lines:
                    lines.seek(start)
                    new = lines.read()
            except OSError:
                continue
            # a last line without its newline is still being written, or was cut by a kill: read it when it ends
            complete = new[: new.rfind(b"\n") + 1]
            self._read_up_to[shard] = start + len(complete)
            damaged = 0
            for line in complete.splitlines():
                try:
                    entry = json.loads(line.decode("utf-8"))
                    self._entries[entry["key"]] = entry["value"]
                except (UnicodeDecodeError, ValueError, KeyError, TypeError):
                    damaged += 1
            if damaged:
                logger.warning("call cache %s: %d damaged line(s) skipped; those calls are made again",
                               shard.name, damaged)
