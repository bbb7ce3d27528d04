"""`sefl-ray annotate serve`: the study's app on uvicorn, 127.0.0.1 by default. One process, one thread pool: every
save is a short SQLite transaction, so this process is the study's only writer (see app.py for why not Serve)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sefl_ray.annotate.app import build_app
from sefl_ray.annotate.export import open_study
from sefl_ray.annotate.study import LINKS_FILE
from sefl_ray.config import SeflConfig

logger = logging.getLogger(__name__)


def serve_study(config: SeflConfig) -> None:
    import uvicorn

    settings = config.annotate
    store = open_study(settings.resolved_db_path(config.run_dir))
    store.check_writable()  # a read-only database fails now, in one line, not at the first answer
    seed = config.seed if settings.seed is None else settings.seed
    app = build_app(store, admin_bootstrap=settings.admin_bootstrap, seed=seed)
    links = settings.resolved_study_dir(config.run_dir) / LINKS_FILE
    logger.info("annotate: serving %s on http://%s:%d (links: %s)", store.path, settings.host, settings.port,
                links if Path(links).exists() else "printed by `annotate create`")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)


@contextlib.contextmanager
def app_in_thread(store, *, port: int, admin_bootstrap: int = 0, seed: int = 0) -> Iterator[str]:
    """The app on 127.0.0.1:`port` in a background thread (tests, the benchmark); yields its base URL."""
    import uvicorn

    app = build_app(store, admin_bootstrap=admin_bootstrap, seed=seed)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="annotate-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the annotate app did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
