"""`sefl-ray pipeline`: every stage in order on one config; each stage issue adds itself to `STAGES`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
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


def run_synth_stage(config: SeflConfig) -> Path:
    from sefl_ray.synth.run import run_synth

    return run_synth(config)


def run_export_stage(config: SeflConfig) -> Path:
    from sefl_ray.data.export import run_export_stage as export

    return export(config)


def run_train_stage(config: SeflConfig) -> Path:
    from sefl_ray.train.run import run_train

    return run_train(config)


def run_infer_stage(config: SeflConfig) -> Path:
    """Feedback of the base model and of the fine-tuned one on the held-out split: the two systems judged next.
    Both run as local model actors (`infer.mode: local`), so no server is needed for models that exist only as
    folders of this run."""
    from sefl_ray.infer.run import run_infer

    merged = Path(config.run_dir) / "train" / "merged"
    for name, model in (("base", config.train.model), ("tuned", str(merged))):
        infer = config.infer.model_copy(update={"name": name, "model": model, "mode": "local"})
        run_infer(config.model_copy(update={"infer": infer}))
    return Path(config.run_dir) / "infer"


def run_judge_stage(config: SeflConfig) -> Path:
    from sefl_ray.judge.run import run_judge

    return run_judge(config)


def run_report_stage(config: SeflConfig) -> Path:
    from sefl_ray.judge.report import run_report

    return run_report(config.run_dir)


STAGES = [
    ("models", run_prepare_models),
    ("synth", run_synth_stage),
    ("export", run_export_stage),
    ("train", run_train_stage),
    ("infer", run_infer_stage),
    ("judge", run_judge_stage),
    ("report", run_report_stage),
]


# Stages that call the config's endpoints: on the embedded default the run's own Serve app answers them, and it is
# stopped between such stages so that training gets the CPUs (or GPUs) the model replica would hold.
SERVED_STAGES = {"synth", "judge"}


def run_pipeline(config: SeflConfig) -> Path:
    check_api_keys(config.endpoints)
    log_resolved_config(config, "pipeline")
    run_dir = Path(config.run_dir)
    save_resolved_config(config, run_dir)
    init_ray(config.ray)
    for name, run_stage in STAGES:
        with _local_serve(config, name in SERVED_STAGES and config.serve.enabled):
            logger.info("stage %s: starting", name)
            output = run_stage(config)
            logger.info("stage %s: done -> %s", name, output)
    return run_dir


@contextlib.contextmanager
def _local_serve(config: SeflConfig, needed: bool) -> Iterator[None]:
    if not needed:
        yield
        return
    from sefl_ray.serve.local import start_local_serve, stop_local_serve

    start_local_serve(config)
    try:
        yield
    finally:
        stop_local_serve()
