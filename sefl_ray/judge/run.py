"""`sefl-ray judge`: every judge compares every pair of systems on every shared item, in both orders, and scores
each feedback on the rubric, on Ray Data through the endpoint layer; then the verdicts are summarized.

Outputs under RUN_DIR/judge/:
    judgments.parquet   one row per judge call: the prompt's coordinates, the raw answer, the parsed verdict or
                        scores and rationale, status/error, tokens and cost
    summary.json        win rates (ties, 95 % bootstrap CIs, length-controlled), position consistency and bias,
                        rubric means, per judge and for the judges' majority (`stats.py`)
    ratings.parquet     the verdicts in the long form `sefl-ray agreement` reads (rater = judge)
    call_cache/         answered calls: a re-run asks no model anything it was already answered

`--rescore` (`rescore=True`) re-parses the saved raw answers and rebuilds the summary without any model call.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sefl_ray.config import JudgeConfig, SeflConfig, log_resolved_config, save_resolved_config
from sefl_ray.data.tables import read_rows
from sefl_ray.durable import write_json, write_parquet
from sefl_ray.errors import ConfigError, InputNotFoundError
from sefl_ray.judge.prompts import pairwise_prompts, parse_choice, parse_scores, rubric_prompt
from sefl_ray.layout import RunLayout
from sefl_ray.llm.batch import EndpointBatch, RowOutcome, new_parts_dir, read_parts, run_endpoint_batches
from sefl_ray.usage import usage_of

logger = logging.getLogger(__name__)

JUDGMENT_SCHEMA = pa.schema([
    ("task_id", pa.string()), ("kind", pa.string()), ("judge", pa.string()), ("model", pa.string()),
    ("item_id", pa.string()), ("system_a", pa.string()), ("system_b", pa.string()), ("order", pa.string()),
    ("criterion", pa.string()), ("system", pa.string()), ("messages", pa.string()),
    ("response_format", pa.string()), ("raw", pa.string()), ("choice", pa.string()), ("winner", pa.string()),
    ("scores", pa.string()), ("rationale", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("cost_usd", pa.float64()),
    ("cached", pa.bool_()), ("latency_s", pa.float64()), ("finished_at", pa.float64()),
])


def run_judge(config: SeflConfig, *, rescore: bool = False) -> Path:
    settings = config.judge
    layout = RunLayout(config.run_dir)
    out_dir, judgments_path = layout.judge_dir, layout.judgments
    systems = load_system_outputs(settings, layout)
    if rescore:
        if not judgments_path.exists():
            raise InputNotFoundError(f"nothing to rescore: {judgments_path} does not exist (run `sefl-ray judge`)")
        judgments = [reparse(row) for row in pq.read_table(judgments_path).to_pylist()]
    else:
        from sefl_ray.llm.endpoint import check_api_keys

        check_api_keys([config.endpoint(name) for name in settings.judges])
        log_resolved_config(config, "judge")
        save_resolved_config(config, out_dir)
        tasks = plan_tasks(systems, settings, config)
        logger.info("judge: %d calls (%d systems, %d judges, mode %s, preset %s)", len(tasks), len(systems),
                    len(settings.judges), settings.mode, settings.preset)
        judgments = call_judges(config, tasks)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(judgments_path, pa.Table.from_pylist(judgments, schema=JUDGMENT_SCHEMA))

    from sefl_ray.judge.stats import judgments_to_ratings, summarize_judgments

    summary = summarize_judgments(judgments, systems, n_bootstrap=settings.n_bootstrap, seed=config.seed)
    write_json(layout.judge_summary, summary)
    write_parquet(layout.judge_ratings, pa.Table.from_pylist(judgments_to_ratings(judgments, systems)))
    human_ratings = human_ratings_paths(config)
    if human_ratings:
        from sefl_ray.judge.agreement import run_agreement

        run_agreement([layout.judge_ratings, *human_ratings], layout.agreement_dir,
                      n_bootstrap=settings.n_bootstrap, seed=config.seed)
    logger.info("judge: %d ok, %d failed -> %s", summary["calls"]["ok"], summary["calls"]["failed"], out_dir)
    return out_dir


def human_ratings_paths(config: SeflConfig) -> list[str | Path]:
    """`judge.human_ratings`, or else the ratings `sefl-ray annotate export` wrote for this run, when there are."""
    if config.judge.human_ratings:
        return list(config.judge.human_ratings)
    exported = config.annotate.exported_ratings_path(config.run_dir)
    if exported.is_file() and exported.stat().st_size:
        logger.info("judge: judge.human_ratings is empty; agreement uses the annotation study's export %s", exported)
        return [exported]
    return []


def manifest_numbers(layout: RunLayout) -> dict[str, Any]:
    summary = json.loads(layout.judge_summary.read_text())
    calls = summary["calls"]
    return {**summary["usage"], "rows": calls["total"], "ok": calls["ok"], "failed": calls["failed"],
            "cached": calls["cached"]}


def load_system_outputs(settings: JudgeConfig, layout: RunLayout) -> dict[str, dict[str, dict[str, str]]]:
    """{system: {item_id: {"prompt", "feedback"}}} from infer outputs or CSV/JSONL files (ok rows only)."""
    paths = [Path(p) for p in settings.inputs] or layout.all_infer_outputs()
    systems: dict[str, dict[str, dict[str, str]]] = {}
    for path in paths:
        for row in _read_output_rows(path):
            if row.get("status", "ok") != "ok" or not row.get("feedback"):
                continue
            name = path.parent.name if path.name == "outputs.parquet" else str(row.get("system") or "")
            if not name:
                raise ConfigError(f"judge.inputs: {path} rows need a `system` column naming the system")
            systems.setdefault(name, {})[str(row["item_id"])] = {"prompt": row.get("prompt") or "",
                                                                  "feedback": row["feedback"]}
    if len(systems) < 2:
        found = ", ".join(systems) or "none"
        raise InputNotFoundError(
            f"judge needs the outputs of at least two systems (found: {found}); run `sefl-ray infer` for each, or "
            "list files in judge.inputs"
        )
    return systems


def plan_tasks(systems: dict[str, dict], settings: JudgeConfig, config: SeflConfig) -> list[dict[str, Any]]:
    """One task per judge call: pairs in both orders (and per criterion for 'sefl'); rubric per system and item."""
    names = sorted(systems)
    shared = sorted(set.intersection(*(set(systems[name]) for name in names)))
    items = shared[: settings.limit] if settings.limit else shared
    if not items:
        raise InputNotFoundError(f"judge: the systems {', '.join(names)} share no item id")
    tasks = []
    for judge in settings.judges:
        model = config.endpoint(judge).model
        for item in items:
            task_text = systems[names[0]][item]["prompt"]
            if settings.mode in ("pairwise", "both"):
                for system_a, system_b in itertools.combinations(names, 2):
                    for order in ("AB", "BA"):
                        first, second = (system_a, system_b) if order == "AB" else (system_b, system_a)
                        for prompt in pairwise_prompts(settings.preset, task_text, systems[first][item]["feedback"],
                                                       systems[second][item]["feedback"]):
                            tasks.append(_task("pairwise", judge, model, item, prompt, system_a=system_a,
                                               system_b=system_b, order=order))
            if settings.mode in ("rubric", "both") and settings.preset == "default":
                for system in names:
                    prompt = rubric_prompt(task_text, systems[system][item]["feedback"])
                    tasks.append(_task("rubric", judge, model, item, prompt, system=system))
    return tasks


def call_judges(config: SeflConfig, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every task through its judge's endpoint; the actors write the rows, read back here in one table."""
    settings, layout = config.judge, RunLayout(config.run_dir)
    job = EndpointBatch(label="judge", endpoints=list(settings.judges), row_fn=judge_row,
                        failed_row=failed_judgment, schema=JUDGMENT_SCHEMA, concurrency=settings.concurrency,
                        batch_size=settings.batch_size,
                        num_actors=settings.num_actors, cache_dir=layout.judge_call_cache)
    parts = run_endpoint_batches(config, tasks, job, new_parts_dir(layout.judge_dir, ".calls"))
    try:
        return read_parts(parts, JUDGMENT_SCHEMA, key="task_id").to_pylist()
    finally:
        shutil.rmtree(parts, ignore_errors=True)


async def judge_row(task: dict[str, Any], clients: dict[str, Any], config: SeflConfig) -> RowOutcome:
    """One judge call: the raw answer and the verdict (or scores) read from it; a failed call is a failed row."""
    from sefl_ray.llm.client import EndpointCallFailed

    settings = config.judge
    params: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                              "seed": config.seed}
    if task["response_format"]:
        params["response_format"] = json.loads(task["response_format"])
    try:
        result = await clients[task["judge"]].chat(json.loads(task["messages"]), **params)
    except EndpointCallFailed as failure:
        record = failure.record
        row = {**task, "status": "failed", "error": record.error, "latency_s": record.latency_s,
               "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": record.cost_usd, "cached": False,
               "finished_at": time.time()}
        return RowOutcome(row, "failed", usage_of([record]))
    record = result.record
    row = reparse({**task, "raw": result.text, "prompt_tokens": record.prompt_tokens,
                   "completion_tokens": record.completion_tokens, "cost_usd": record.cost_usd,
                   "cached": record.cached, "latency_s": record.latency_s, "finished_at": time.time()})
    return RowOutcome(row, row["status"], usage_of([record]))


def failed_judgment(task: dict[str, Any], reason: str, config: SeflConfig) -> dict[str, Any]:
    return {**task, "status": "failed", "error": reason, "latency_s": 0.0, "prompt_tokens": 0,
            "completion_tokens": 0, "cost_usd": None, "cached": False, "finished_at": time.time()}


def reparse(row: dict[str, Any]) -> dict[str, Any]:
    """Read the verdict or scores out of a row's raw answer (again); a call that failed stays failed."""
    row = dict(row)
    if row.get("raw") is None:
        return row
    row.update(choice=None, winner=None, scores=None, rationale=None, status="ok", error=None)
    try:
        if row["kind"] == "pairwise":
            choice, rationale = parse_choice(row["raw"])
            shown_first = row["system_a"] if row["order"] == "AB" else row["system_b"]
            shown_second = row["system_b"] if row["order"] == "AB" else row["system_a"]
            row.update(choice=choice, rationale=rationale,
                       winner={"A": shown_first, "B": shown_second}.get(choice, "tie"))
        else:
            scores, rationale = parse_scores(row["raw"])
            row.update(scores=json.dumps(scores), rationale=rationale)
    except (ValueError, RecursionError, TypeError) as exc:  # any answer, however hostile, is a row, not a crash
        row.update(status="failed", error=f"unparseable verdict: {exc}")
    return row


def _task(kind: str, judge: str, model: str, item: str, prompt, **coordinates: str) -> dict[str, Any]:
    task = {name: None for name in JUDGMENT_SCHEMA.names}
    task.update(kind=kind, judge=judge, model=model, item_id=item, criterion=prompt.criterion,
                messages=json.dumps(prompt.messages),
                response_format=json.dumps(prompt.response_format) if prompt.response_format else None,
                **coordinates)
    parts = [kind, judge, item, coordinates.get("system_a") or coordinates.get("system"),
             coordinates.get("system_b") or "", coordinates.get("order") or "", prompt.criterion]
    task["task_id"] = "|".join(str(part) for part in parts)
    return task


def _read_output_rows(path: Path) -> list[dict[str, Any]]:
    rows = read_rows(path, key="judge.inputs", allow_empty=False)
    missing = {"item_id", "feedback"} - set(rows[0] if rows else {})
    if rows and missing:
        raise ConfigError(f"judge.inputs: {path} lacks column(s) {', '.join(sorted(missing))}")
    return rows
