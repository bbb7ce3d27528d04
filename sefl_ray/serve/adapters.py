"""LoRA adapters held by a transformers replica: Serve's multiplexer loads them on demand and evicts the least
recently used, and an eviction waits for the requests still using the adapter before it unloads it."""

import collections
import logging
import threading

from sefl_ray.serve.engine_api import Engine

logger = logging.getLogger(__name__)


class AdapterUsers:
    """How many requests are using each adapter, so an eviction waits for them before unloading it."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._changed = threading.Condition()

    def enter(self, name: str) -> None:
        with self._changed:
            self._counts[name] += 1

    def leave(self, name: str) -> None:
        with self._changed:
            self._counts[name] -= 1
            if self._counts[name] <= 0:
                del self._counts[name]
            self._changed.notify_all()

    def wait_until_unused(self, name: str) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._counts[name] <= 0)


class LoadedAdapter:
    """What Serve's multiplexer caches per adapter. It calls `__del__` (in a worker thread) when it evicts one."""

    def __init__(self, name: str, engine: Engine, users: AdapterUsers) -> None:
        self.name = name
        self._engine = engine
        self._users = users
        self._unloaded = False

    def __del__(self) -> None:
        # Serve calls this on eviction, and Python may call it again at garbage collection: unload once.
        if self._unloaded:
            return
        self._unloaded = True
        try:
            self._users.wait_until_unused(self.name)
            self._engine.unload_adapter(self.name)
            logger.info("unloaded adapter '%s'", self.name)
        except Exception:
            logger.exception("unloading adapter '%s' failed", self.name)
