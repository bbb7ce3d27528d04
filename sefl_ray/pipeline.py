"""`sefl-ray pipeline`: every stage in order on one config, each skipped when its outputs are current.

A stage is current when the manifest (`RUN_DIR/manifest.json`) records it as done with the same fingerprint, its
artifacts still exist, and the stage before it has not run again since. A stage's fingerprint hashes the config
fields that decide its outputs (not those that only decide speed, such as concurrency) together with the previous
stage's fingerprint, so a changed config re-runs that stage and every stage after it, and nothing before it.
`--from STAGE` re-runs a stage and those after it; `--only STAGE` runs one stage. Stages talk only through files in
the run dir, so each can also run alone (`sefl-ray <stage>`) or as its own Ray job. The stages, their order, what
decides each one's fingerprint and who reads whom are in the registry, `sefl_ray/stages.py`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sefl_ray.cluster import init_ray
from sefl_ray.config import SeflConfig, log_resolved_config, redacted_dump, save_resolved_config
from sefl_ray.durable import set_aside, unreadable_reason
from sefl_ray.errors import ConfigError
from sefl_ray.layout import RunLayout
from sefl_ray.llm.endpoint import check_api_keys
from sefl_ray.manifest import environment_record, now_iso, read_manifest, write_manifest
from sefl_ray.stages import STAGES, Stage, stage_fingerprints, stage_names, stage_numbers

logger = logging.getLogger(__name__)


def plan_stages(
    manifest: dict[str, Any], fingerprints: dict[str, str], run_dir: Path, *, start: str | None = None,
    only: str | None = None, config: SeflConfig | None = None,
) -> dict[str, str]:
    """stage -> why it runs ('forced', 'new', 'config changed', ...) or 'skip'. A stage whose upstream runs (or
    re-ran since it last ran, e.g. under `--only`) runs too, since it reads what that stage rewrites. A stage the
    config switches off (`Stage.enabled`, e.g. annotate) is skipped and leaves no record."""
    names = stage_names()
    for flag, stage in (("--from", start), ("--only", only)):
        if stage is not None and stage not in names:
            raise ConfigError(f"{flag} {stage}: no such stage (stages: {', '.join(names)})")
    recorded = manifest.get("stages", {})
    plan: dict[str, str] = {}
    for stage in STAGES:
        name, upstream = stage.name, stage.upstream
        if config is not None and not stage.is_enabled(config):
            plan[name] = "skip"
        elif only is not None:
            plan[name] = "forced" if name == only else "skip"
        elif start is not None and names.index(name) >= names.index(start):
            plan[name] = "forced"
        elif start is None and upstream is not None and plan[upstream] != "skip":
            plan[name] = "upstream runs"
        else:
            upstream_run_id = (recorded.get(upstream) or {}).get("run_id") if upstream else None
            why = _staleness(recorded.get(name) or {}, fingerprints[name], upstream_run_id, run_dir, name)
            if why != "skip" and start is not None:
                logger.warning("stage %s is stale (%s) but comes before --from %s: not run; its outputs are used "
                               "as they are", name, why, start)
                why = "skip"
            plan[name] = why
    return plan


def _set_aside_unreadable_outputs(run_dir: Path, stage_name: str) -> str | None:
    """The first summary or table of the stage (its folder and one level down) that no longer reads back, set
    aside so that the stage writes it again; None when all read."""
    stage_dir = RunLayout(run_dir).stage_dir(stage_name)
    for path in sorted([*stage_dir.glob("*"), *stage_dir.glob("*/*")]):
        if path.suffix in (".json", ".parquet") and path.is_file():
            reason = unreadable_reason(path)
            if reason is not None:
                shown = _relative_to(run_dir, path)
                set_aside(path, f"{reason}; stage {stage_name} runs again", shown_as=shown)
                return shown
    return None


def _staleness(record: dict[str, Any], fingerprint: str, upstream_run_id: str | None, run_dir: Path,
               stage_name: str) -> str:
    if record.get("status") != "done":
        return "new" if not record else f"last run {record.get('status', 'unfinished')}"
    if record.get("fingerprint") != fingerprint:
        return "config changed"
    missing = [path for path in record.get("artifacts", []) if not (run_dir / path).exists()]
    if missing:
        return f"artifact missing: {missing[0]}"
    damaged = _set_aside_unreadable_outputs(run_dir, stage_name)
    if damaged:
        return f"unreadable: {damaged}"
    if record.get("upstream_run_id") != upstream_run_id:
        return "upstream re-ran"
    return "skip"


def run_pipeline(config: SeflConfig, *, start: str | None = None, only: str | None = None) -> Path:
    check_api_keys(config.endpoints)  # first: an unset key is the likeliest mistake, and its message says which
    run_dir = Path(config.run_dir)
    fingerprints = stage_fingerprints(config)
    manifest = read_manifest(run_dir)
    plan = plan_stages(manifest, fingerprints, run_dir, start=start, only=only, config=config)
    for stage in STAGES:
        skipped = "skipped (switched off)" if not stage.is_enabled(config) else "skipped (outputs current)"
        logger.info("stage %-8s %s", stage.name, skipped if plan[stage.name] == "skip" else
                    f"runs ({plan[stage.name]})")
    if all(why == "skip" for why in plan.values()):
        logger.info("pipeline: every stage is current; nothing to do (--from STAGE re-runs from a stage)")
        return run_dir

    manifest.update({"run_dir": str(run_dir.resolve()), "config": redacted_dump(config),
                     "fingerprints": fingerprints})
    manifest.setdefault("created_at", now_iso())
    manifest.setdefault("stages", {})
    log_resolved_config(config, "pipeline")
    save_resolved_config(config, run_dir)
    init_ray(config.ray)
    environment = environment_record()
    with contextlib.ExitStack() as serving:  # the run's own Serve app, up across consecutive stages that call it
        serve_up = False
        for stage in STAGES:
            if plan[stage.name] == "skip":
                continue
            needs_serve = config.serve.enabled and stage.endpoints is not None and bool(stage.endpoints(config))
            if serve_up and not needs_serve:
                serving.close()  # the stages that call nobody (train, infer on model actors) get its CPUs and memory
            elif needs_serve and not serve_up:
                serving.enter_context(_local_serve(config))
            serve_up = needs_serve
            _run_recorded(stage, config, manifest, fingerprints[stage.name], environment)
    return run_dir


def _run_recorded(stage: Stage, config: SeflConfig, manifest: dict[str, Any], fingerprint: str,
                  environment: dict[str, Any]) -> None:
    """Run one stage and record it in the manifest: done with its numbers and artifacts, or failed with why. Each
    record keeps the environment (versions, git commit) that produced it, and a run id that later stages note as
    their upstream's, so a stage re-run alone (`--only`) makes the stages reading it stale."""
    run_dir, name = Path(config.run_dir), stage.name
    stages = manifest["stages"]
    upstream = stages.get(stage.upstream or "", {})
    record: dict[str, Any] = {"status": "running", "run_id": uuid.uuid4().hex[:12], "fingerprint": fingerprint,
                              "started_at": now_iso(), "upstream_run_id": upstream.get("run_id"),
                              "environment": environment}
    stages[name] = record
    write_manifest(run_dir, manifest)
    logger.info("stage %s: starting", name)
    started = time.perf_counter()
    try:
        output = stage.run(config, pipeline=True)
    except BaseException as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=now_iso(),
                      elapsed_s=round(time.perf_counter() - started, 3))
        write_manifest(run_dir, manifest)
        raise
    artifacts = [_relative_to(run_dir, Path(path)) for path in (output if isinstance(output, list) else [output])]
    record.update(status="done", finished_at=now_iso(), elapsed_s=round(time.perf_counter() - started, 3),
                  artifacts=artifacts, **stage_numbers(stage, run_dir))
    write_manifest(run_dir, manifest)
    logger.info("stage %s: done in %.1f s -> %s", name, record["elapsed_s"], ", ".join(artifacts))


def _relative_to(run_dir: Path, path: Path) -> str:
    """Artifacts inside the run dir are recorded relative to it, so a moved or remounted run dir stays current."""
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


@contextlib.contextmanager
def _local_serve(config: SeflConfig) -> Iterator[None]:
    from sefl_ray.serve.local import start_local_serve, stop_local_serve

    start_local_serve(config)
    try:
        yield
    finally:
        stop_local_serve()
