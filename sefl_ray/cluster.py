"""Where a run's Ray comes from: a quiet local Ray by default, a cluster when RAY_ADDRESS or --address says so."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # workers import this module for `quiet_local_workers`: keep it light
    from sefl_ray.config import RayConfig

logger = logging.getLogger(__name__)

# Ray Train's PlacementGroupCleaner asks the State API, which lives in the dashboard, once a second whether the
# controller is alive, and warns each time it cannot. A local Ray runs without a dashboard (and ends with our process,
# placement groups included), so on a laptop that warning would fill the console for the whole training run.
_LOCAL_RAY_NOISE = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def init_ray(ray_config: RayConfig, address: str | None = None) -> str:
    """Start or join Ray once per process; returns the address joined ('local' for a Ray started here).

    Inside a Ray job (`ray job submit`) RAY_ADDRESS is set by Ray itself, so the same command joins the cluster.
    """
    import ray

    if ray.is_initialized():
        return "already initialized"
    address = address or ray_config.address or os.environ.get("RAY_ADDRESS")
    runtime_env = ray_config.runtime_env or None
    common = dict(namespace=ray_config.namespace, runtime_env=runtime_env, logging_level=logging.WARNING)
    if address:
        from sefl_ray.config import redact_text

        logger.info("joining Ray cluster at %s", redact_text(address))
        ray.init(address=address, **common)
        return address
    logger.info("starting a local Ray (%s CPUs)", ray_config.num_cpus or os.cpu_count())
    common["runtime_env"] = {"worker_process_setup_hook": f"{__name__}.quiet_local_workers", **(runtime_env or {})}
    ray.init(
        address="local",  # always a new Ray: never join a `ray start` cluster on this machine unasked (ray.address)
        num_cpus=ray_config.num_cpus,
        object_store_memory=ray_config.object_store_mb * 1024 * 1024,
        include_dashboard=False,
        **common,
    )
    return "local"


def quiet_local_workers() -> None:
    """Runs in every worker of a local Ray (its `worker_process_setup_hook`): mutes warnings that only say the
    dashboard is absent."""
    for name in _LOCAL_RAY_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)
