"""Where a run's Ray comes from: a quiet local Ray by default, a cluster when RAY_ADDRESS or --address says so."""

from __future__ import annotations

import logging
import os

from sefl_ray.config import RayConfig

logger = logging.getLogger(__name__)


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
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, **common)
        return address
    logger.info("starting a local Ray (%s CPUs)", ray_config.num_cpus or os.cpu_count())
    ray.init(
        address="local",  # always a new Ray: never join a `ray start` cluster on this machine unasked (ray.address)
        num_cpus=ray_config.num_cpus,
        object_store_memory=ray_config.object_store_mb * 1024 * 1024,
        include_dashboard=False,
        **common,
    )
    return "local"
