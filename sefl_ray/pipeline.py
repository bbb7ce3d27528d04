"""`sefl-ray pipeline`: every stage in order on one config, each skipped when its outputs are current.

A stage is current when the manifest (`RUN_DIR/manifest.json`) records it as done with the same fingerprint, its
artifacts still exist, and the stage before it has not run again since. A stage's fingerprint hashes the config
fields that decide its outputs (not those that only decide speed, such as concurrency) together with the previous
stage's fingerprint, so a changed config re-runs that stage and every stage after it, and nothing before it.
`--from STAGE` re-runs a stage and those after it; `--only STAGE` runs one stage. Stages talk only through files in
the run dir, so each can also run alone (`sefl-ray <stage>`) or as its own Ray job.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sefl_ray.cluster import init_ray
from sefl_ray.config import SeflConfig, config_fingerprint, log_resolved_config, save_resolved_config
from sefl_ray.errors import ConfigError
from sefl_ray.llm.endpoint import check_api_keys
from sefl_ray.manifest import environment_record, now_iso, read_manifest, stage_numbers, write_manifest

logger = logging.getLogger(__name__)


def run_prepare_models(config: SeflConfig) -> list[Path]:
    """Resolve every embedded model the run names, converting each once, so later stages start offline."""
    from sefl_ray.models import resolve_model

    folders = []
    for name in config.models.prepare:
        folders.append(Path(resolve_model(name)))
        logger.info("model %s -> %s", name, folders[-1])
    return folders


def run_synth_stage(config: SeflConfig) -> Path:
    from sefl_ray.synth.run import run_synth

    return run_synth(config)


def run_export_stage(config: SeflConfig) -> Path:
    from sefl_ray.data.export import run_export_stage as export

    return export(config)


def run_train_stage(config: SeflConfig) -> Path:
    """Train and merge: `infer` runs the merged folder as the tuned system, so the pipeline always merges."""
    from sefl_ray.train.run import run_train

    if not config.train.merge:
        logger.info("pipeline: train.merge is false, but infer needs the merged model; merging anyway")
        config = config.model_copy(update={"train": config.train.model_copy(update={"merge": True})})
    return run_train(config) / "merged"


def run_infer_stage(config: SeflConfig) -> list[Path]:
    """Feedback of the base model and of the fine-tuned one on the held-out split: the two systems judged next.
    Both run as local model actors (`infer.mode: local`), so no server is needed for models that exist only as
    folders of this run."""
    from sefl_ray.infer.run import run_infer

    merged = Path(config.run_dir) / "train" / "merged"
    outputs = []
    for name, model in (("base", config.train.model), ("tuned", str(merged))):
        infer = config.infer.model_copy(update={"name": name, "model": model, "mode": "local"})
        outputs.append(run_infer(config.model_copy(update={"infer": infer})))
    if config.annotate.enabled:
        # The human study reads these outputs; it is not an artifact of infer (it outlives re-runs of infer, and a
        # study with answers is never replaced), so `sefl-ray annotate create CONFIG` also makes it any time.
        from sefl_ray.annotate.study import StudyHasAnswers, create_study, format_links

        try:
            logger.info("annotate: the study's links (also in its links.txt):\n%s", format_links(create_study(config)))
        except StudyHasAnswers as exc:  # the new outputs are kept; the study people are rating is not touched
            logger.warning("%s", exc)
    return outputs


def run_judge_stage(config: SeflConfig) -> Path:
    from sefl_ray.judge.run import run_judge

    return run_judge(config)


def run_report_stage(config: SeflConfig) -> Path:
    from sefl_ray.report.run import run_report

    return run_report(config.run_dir)


STAGES: list[tuple[str, Callable[[SeflConfig], Path | list[Path]]]] = [
    ("models", run_prepare_models),
    ("synth", run_synth_stage),
    ("export", run_export_stage),
    ("train", run_train_stage),
    ("infer", run_infer_stage),
    ("judge", run_judge_stage),
    ("report", run_report_stage),
]
STAGE_NAMES = [name for name, _ in STAGES]
# The stage whose files each stage reads. `models` only fills a cache, so running it again invalidates nothing.
UPSTREAM = {"export": "synth", "train": "export", "infer": "train", "judge": "infer", "report": "judge"}


# Stages that call the config's endpoints: on the embedded default the run's own Serve app answers them, and it is
# stopped between such stages so that training gets the CPUs (or GPUs) the model replica would hold.
SERVED_STAGES = {"synth", "judge"}
# The fields of the run's Serve app that decide what it answers (replicas, batching and CPUs only decide speed).
SERVED_MODEL_FIELDS = ("model", "engine", "dtype", "served_model_name", "max_model_len", "default_max_tokens",
                       "adapters")


def stage_inputs(name: str, config: SeflConfig) -> dict[str, Any]:
    """The config fields that decide a stage's outputs. Speed-only knobs are left out, so changing them re-uses
    finished work; the model behind the run's own Serve app counts for the stages that call it."""
    served = ({field: config.serve.app.get(field) for field in SERVED_MODEL_FIELDS}
              if config.serve.enabled and name in SERVED_STAGES else None)
    if name == "models":
        return {"prepare": config.models.prepare}
    if name == "synth":
        from sefl_ray.synth.run import synth_fingerprint

        synth = config.synth
        return {"content": synth_fingerprint(config), "served": served, "amount": synth.model_dump(
            mode="json", include={"num_conversations", "samples_per_source", "budget_usd", "budget_tokens"})}
    if name == "export":
        return {"export": config.export.model_dump(mode="json"), "seed": config.seed}
    if name == "train":
        from sefl_ray.train.run import EXECUTION_ONLY_FIELDS

        # `merge` is an execution field of `sefl-ray train`, but the pipeline always merges (see run_train_stage).
        return {"train": config.train.model_dump(mode="json", exclude=EXECUTION_ONLY_FIELDS | {"merge"}),
                "seed": config.seed}
    if name == "infer":
        return {"infer": config.infer.model_dump(
            mode="json", include={"input", "split", "max_new_tokens", "temperature", "batch_size", "limit"})}
    if name == "judge":
        judge = config.judge
        return {"judge": judge.model_dump(mode="json", exclude={"concurrency", "num_actors"}), "served": served,
                "models": _endpoint_models(config, judge.judges), "seed": config.seed}
    return {}


def _endpoint_models(config: SeflConfig, names: list[str]) -> dict[str, str | None]:
    """Model per endpoint name; an unknown name is left for the stage itself to report, with its context."""
    known = {endpoint.name: endpoint.model for endpoint in config.endpoints}
    return {name: known.get(name) for name in names}


def stage_fingerprints(config: SeflConfig) -> dict[str, str]:
    """Each stage's fingerprint, chained: it includes the fingerprint of the stage it reads from (UPSTREAM)."""
    fingerprints: dict[str, str] = {}
    for name in STAGE_NAMES:
        upstream = fingerprints[UPSTREAM[name]] if name in UPSTREAM else ""
        fingerprints[name] = config_fingerprint({"stage": name, "inputs": stage_inputs(name, config),
                                                 "upstream": upstream})
    return fingerprints


def plan_stages(
    manifest: dict[str, Any], fingerprints: dict[str, str], run_dir: Path, *, start: str | None = None,
    only: str | None = None,
) -> dict[str, str]:
    """stage -> why it runs ('forced', 'new', 'config changed', ...) or 'skip'. A stage whose upstream runs (or
    re-ran since it last ran, e.g. under `--only`) runs too, since it reads what that stage rewrites."""
    for flag, stage in (("--from", start), ("--only", only)):
        if stage is not None and stage not in STAGE_NAMES:
            raise ConfigError(f"{flag} {stage}: no such stage (stages: {', '.join(STAGE_NAMES)})")
    recorded = manifest.get("stages", {})
    plan: dict[str, str] = {}
    for name in STAGE_NAMES:
        upstream = UPSTREAM.get(name)
        if only is not None:
            plan[name] = "forced" if name == only else "skip"
        elif start is not None and STAGE_NAMES.index(name) >= STAGE_NAMES.index(start):
            plan[name] = "forced"
        elif start is None and upstream is not None and plan[upstream] != "skip":
            plan[name] = "upstream runs"
        else:
            upstream_run_id = (recorded.get(upstream) or {}).get("run_id") if upstream else None
            why = _staleness(recorded.get(name) or {}, fingerprints[name], upstream_run_id, run_dir)
            if why != "skip" and start is not None:
                logger.warning("stage %s is stale (%s) but comes before --from %s: not run; its outputs are used "
                               "as they are", name, why, start)
                why = "skip"
            plan[name] = why
    return plan


def _staleness(record: dict[str, Any], fingerprint: str, upstream_run_id: str | None, run_dir: Path) -> str:
    if record.get("status") != "done":
        return "new" if not record else f"last run {record.get('status', 'unfinished')}"
    if record.get("fingerprint") != fingerprint:
        return "config changed"
    missing = [path for path in record.get("artifacts", []) if not (run_dir / path).exists()]
    if missing:
        return f"artifact missing: {missing[0]}"
    if record.get("upstream_run_id") != upstream_run_id:
        return "upstream re-ran"
    return "skip"


def run_pipeline(config: SeflConfig, *, start: str | None = None, only: str | None = None) -> Path:
    check_api_keys(config.endpoints)  # first: an unset key is the likeliest mistake, and its message says which
    run_dir = Path(config.run_dir)
    fingerprints = stage_fingerprints(config)
    manifest = read_manifest(run_dir)
    plan = plan_stages(manifest, fingerprints, run_dir, start=start, only=only)
    for name in STAGE_NAMES:
        logger.info("stage %-7s %s", name, "skipped (outputs current)" if plan[name] == "skip" else
                    f"runs ({plan[name]})")
    if all(why == "skip" for why in plan.values()):
        logger.info("pipeline: every stage is current; nothing to do (--from STAGE re-runs from a stage)")
        return run_dir

    manifest.update({"run_dir": str(run_dir.resolve()), "config": config.model_dump(mode="json"),
                     "fingerprints": fingerprints})
    manifest.setdefault("created_at", now_iso())
    manifest.setdefault("stages", {})
    log_resolved_config(config, "pipeline")
    save_resolved_config(config, run_dir)
    init_ray(config.ray)
    environment = environment_record()
    for name, run_stage in STAGES:
        if plan[name] == "skip":
            continue
        with _local_serve(config, name in SERVED_STAGES and config.serve.enabled):
            _run_recorded(name, run_stage, config, manifest, fingerprints[name], environment)
    return run_dir


def _run_recorded(name: str, run_stage, config: SeflConfig, manifest: dict[str, Any], fingerprint: str,
                  environment: dict[str, Any]) -> None:
    """Run one stage and record it in the manifest: done with its numbers and artifacts, or failed with why. Each
    record keeps the environment (versions, git commit) that produced it, and a run id that later stages note as
    their upstream's, so a stage re-run alone (`--only`) makes the stages reading it stale."""
    run_dir = Path(config.run_dir)
    stages = manifest["stages"]
    upstream = stages.get(UPSTREAM.get(name, ""), {})
    record: dict[str, Any] = {"status": "running", "run_id": uuid.uuid4().hex[:12], "fingerprint": fingerprint,
                              "started_at": now_iso(), "upstream_run_id": upstream.get("run_id"),
                              "environment": environment}
    stages[name] = record
    write_manifest(run_dir, manifest)
    logger.info("stage %s: starting", name)
    started = time.perf_counter()
    try:
        output = run_stage(config)
    except BaseException as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=now_iso(),
                      elapsed_s=round(time.perf_counter() - started, 3))
        write_manifest(run_dir, manifest)
        raise
    artifacts = [_relative_to(run_dir, Path(path)) for path in (output if isinstance(output, list) else [output])]
    record.update(status="done", finished_at=now_iso(), elapsed_s=round(time.perf_counter() - started, 3),
                  artifacts=artifacts, **stage_numbers(name, run_dir))
    write_manifest(run_dir, manifest)
    logger.info("stage %s: done in %.1f s -> %s", name, record["elapsed_s"], ", ".join(artifacts))


def _relative_to(run_dir: Path, path: Path) -> str:
    """Artifacts inside the run dir are recorded relative to it, so a moved or remounted run dir stays current."""
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


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
