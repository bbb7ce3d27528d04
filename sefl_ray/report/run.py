"""`sefl-ray report RUN_DIR`: one HTML page for the whole run, `RUN_DIR/report/report.html` (plus `report.md`),
read from whatever stages have written their outputs into the run dir.

The page has the same parts in the same order every time: Run (the manifest), Data (synthesis), Training,
Inference, Judges, Calibration (against human ratings) and Examples. A part whose stage did not run says so in
one line, so the headings stay put. It opens offline, as one file: plots inlined, no scripts, links only to the
run's own files, and every text a model wrote is escaped (see `render.py`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sefl_ray.durable import unreadable_reason, write_text
from sefl_ray.errors import ConfigError, InputNotFoundError
from sefl_ray.layout import RunLayout
from sefl_ray.manifest import read_manifest
from sefl_ray.report.examples import example_sections
from sefl_ray.report.render import Part, render_html, render_markdown
from sefl_ray.report.sections import blank, section
from sefl_ray.stages import STAGES, resolve
from sefl_ray.usage import Usage

logger = logging.getLogger(__name__)

# What any stage leaves behind; a run dir with none of them has nothing to report.
STAGE_OUTPUTS = ["manifest.json", "*/summary.json", "train/metrics.jsonl", "infer/*/outputs.parquet"]
RUN_FILES = ["manifest.json", "config.yaml"]


def run_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not any(any(run_dir.glob(pattern)) for pattern in STAGE_OUTPUTS):
        raise InputNotFoundError(f"nothing to report in {run_dir}: none of {', '.join(STAGE_OUTPUTS)} exists; run "
                                 "`sefl-ray pipeline CONFIG` (or a stage) with this run_dir first")
    _check_readable(run_dir)
    layout = RunLayout(run_dir)
    try:  # before the parts are built: a report that cannot be written fails at once
        layout.report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the report in {layout.report_dir}: {exc.strerror}") from None
    # The run, then each stage's parts in pipeline order (the registry's `report=`), then examples side by side.
    parts = [Part("run", "Run", run_sections(run_dir)),
             *(Part(part.id, part.title, resolve(part.builder)(run_dir)) for stage in STAGES for part in stage.report),
             Part("examples", "Examples", example_sections(run_dir))]
    run_files = [name for name in RUN_FILES if (run_dir / name).exists()]
    write_text(layout.report_html, render_html(parts, run_dir, run_files))
    write_text(layout.report_md, render_markdown(parts, run_dir, run_files))
    logger.info("report: %s", layout.report_html)
    return layout.report_html


def _check_readable(run_dir: Path) -> None:
    """The manifest, summaries and tables the report reads, each read back before any part uses it: one that does
    not read (cut short, not JSON, no parquet footer) stops the report with its name instead of a traceback, and
    stays where it is (a report only reads; the pipeline sets such a file aside and runs its stage again)."""
    layout = RunLayout(run_dir)
    infer_outputs = layout.all_infer_outputs()
    paths = [layout.manifest, layout.synth_summary, layout.export_summary, layout.train_summary,
             *infer_outputs, *(layout.infer_summary(path.parent.name) for path in infer_outputs),
             layout.judge_summary, layout.judgments, layout.agreement]
    for path in paths:
        reason = unreadable_reason(path) if path.is_file() else None
        if reason is None and path == layout.manifest and path.is_file():
            manifest = json.loads(path.read_text())
            if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
                reason = "its 'stages' is not a mapping of stage records"
        if reason is not None:
            raise ConfigError(f"cannot report {run_dir}: {path} is unreadable ({reason}); run its stage again, or "
                              "move the file away to report without it")


def run_report_stage(config) -> Path:
    """The pipeline's `report` stage: the report of the config's run dir."""
    return run_report(config.run_dir)


def run_sections(run_dir: Path) -> list[dict[str, Any]]:
    """The stages as `manifest.json` records them, in pipeline order, and the versions that ran the last one."""
    stages = read_manifest(run_dir).get("stages", {})
    if not stages:
        return [section("Not run by the pipeline", "No manifest.json here: the stages below ran on their own "
                        "(`sefl-ray <stage>`), so there is no record of their timing and versions.")]
    rows = []
    for name, record in stages.items():
        if name == "report":  # the stage writing this page: its record is not finished yet
            continue
        commit = (record.get("environment") or {}).get("git_commit") or ""
        usage = Usage.from_dict(record)
        cost = usage.cost_text() if record.get("calls") else blank(record.get("cost_usd"))
        rows.append([name, record.get("status"), *(blank(record.get(key)) for key in ("elapsed_s", "rows", "tokens")),
                     cost, record.get("finished_at") or "", commit[:12]])
    sections = [section("Stages", "Each stage as manifest.json records it (resolved config, fingerprints, versions "
                        "and artifact paths are there too).",
                        table=(["stage", "status", "seconds", "rows", "tokens", "cost", "finished", "git commit"],
                               rows))]
    environment = next((r["environment"] for r in reversed(list(stages.values())) if r.get("environment")), None)
    if environment:
        packages = [[name, blank(version)] for name, version in (environment.get("packages") or {}).items()]
        sections.append(section("Environment", f"Python {environment.get('python')} on "
                                f"{environment.get('platform')}, as the last stage recorded it.",
                                table=(["package", "version"], packages)))
    return sections
