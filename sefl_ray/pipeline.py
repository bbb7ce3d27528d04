"""`sefl-ray pipeline`: every stage in order on one config; each stage issue adds itself to `STAGES`."""

from __future__ import annotations

import logging
from pathlib import Path

from sefl_ray.cluster import init_ray
from sefl_ray.config import SeflConfig, log_resolved_config, save_resolved_config
from sefl_ray.llm.endpoint import check_api_keys

logger = logging.getLogger(__name__)


def run_prepare_models(config: SeflConfig) -> Path:
    """Resolve every embedded model the run names, converting each once, so later stages start offline."""
    from sefl_ray.models import resolve_model

    for name in config.models.prepare:
        logger.info("model %s -> %s", name, resolve_model(name))
    return Path(config.run_dir)


STAGES = [("models", run_prepare_models)]


def run_pipeline(config: SeflConfig) -> Path:
    check_api_keys(config.endpoints)
    log_resolved_config(config, "pipeline")
    run_dir = Path(config.run_dir)
    save_resolved_config(config, run_dir)
    init_ray(config.ray)
    for name, run_stage in STAGES:
        logger.info("stage %s: starting", name)
        output = run_stage(config)
        logger.info("stage %s: done -> %s", name, output)
    return run_dir
