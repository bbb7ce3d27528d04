"""The run's own Serve app: the embedded model behind an OpenAI API on this Ray, for the stages that call one."""

from __future__ import annotations

import logging
import time

from sefl_ray.config import SeflConfig
from sefl_ray.errors import SeflError

logger = logging.getLogger(__name__)

APP_NAME = "sefl-local"


def start_local_serve(config: SeflConfig, timeout_s: float = 600.0) -> str:
    """Deploy `config.serve.app` on the current Ray and wait until Serve says it runs; returns its base URL.

    Serve's own status is the readiness signal for both engines (Serve LLM's app has no `/health`), and a failed
    deployment stops the wait at once with Serve's message instead of running out the clock."""
    from ray import serve

    from sefl_ray.serve.app import build_app

    settings = config.serve
    app = build_app(settings.app)  # a bad app config or an unset api_key_env stops here, before Serve starts
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    base_url = f"http://{settings.host}:{settings.port}/v1"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "RUNNING":
            logger.info("local Serve app up at %s", base_url)
            return base_url
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            message = " ".join(str(status.message).split())[:500]
            raise SeflError(f"the local Serve app failed to start ({status.status}): {message}")
        time.sleep(1.0)
    raise SeflError(f"the local Serve app did not come up on {base_url} within {timeout_s:.0f} s")


def stop_local_serve() -> None:
    from ray import serve

    serve.delete(APP_NAME)
