"""`sefl-ray synth`: thousands of teacher/student conversations at once on Ray Data, resumable and budgeted.

read plans -> async actors (many conversations in flight each) -> parquet, one file per block of conversations.
Each row's id hashes (source id, sample index, config fingerprint), so a re-run plans the same rows, skips those
already `ok`, and tries failed ones again. Answered calls are cached on disk, so work cut short by a kill is not
paid for twice. A budget actor (only when a cap is set) stops new conversations once the cost or token cap is
reached.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from sefl_ray.cluster import init_ray
from sefl_ray.config import SeflConfig, config_fingerprint, decided_by, log_resolved_config, save_resolved_config
from sefl_ray.data.records import (RECORD_SCHEMA, add_role_usage, iter_record_tables, past_attempts, read_records,
                                   record_id)
from sefl_ray.durable import SET_ASIDE_MARK, write_json, write_jsonl
from sefl_ray.errors import ConfigError
from sefl_ray.layout import RunLayout
from sefl_ray.llm.batch import EndpointBatch, RowOutcome, new_parts_dir, run_endpoint_batches
from sefl_ray.llm.endpoint import check_api_keys
from sefl_ray.synth.prompts import PROMPT_VERSION
from sefl_ray.synth.sources import load_sources
from sefl_ray.usage import Usage

logger = logging.getLogger(__name__)


def run_synth(config: SeflConfig) -> Path:
    """Synthesize every planned conversation not already done; returns the records folder."""
    synth = config.synth
    role_endpoints = [config.endpoint(name) for role in ("teacher", "student") for name in synth.endpoint_names(role)]
    if synth.min_mistakes > synth.max_mistakes:
        raise ConfigError("synth.min_mistakes must not exceed synth.max_mistakes")
    check_api_keys(role_endpoints)
    log_resolved_config(config, "synth")
    layout = RunLayout(config.run_dir)
    out_dir, records_dir = layout.synth_dir, layout.synth_records
    fingerprint = synth_fingerprint(config)

    sources = load_sources(synth.sources)
    plans = plan_conversations(config, fingerprint, sources)
    save_resolved_config(config, out_dir)  # once the inputs are known good: a bad one leaves the last run's copy
    write_jsonl(layout.synth_plan, plans)  # export reads which rows this config asked for from here
    done = read_records(records_dir, columns=[])
    ok_ids = {row_id for row_id, status in zip(done["id"].to_pylist(), done["status"].to_pylist()) if status == "ok"}
    failed_ids = set(done["id"].to_pylist()) - ok_ids
    spent, failures = past_attempts(records_dir)
    # A retried row gets a fresh seed: the same seed would ask the very requests the cache answered, and get the
    # same reply that failed.
    todo = [{**p, "seed": retry_seed(p["seed"], failures[p["id"]])} for p in plans
            if p["id"] not in ok_ids and (synth.retry_failed or p["id"] not in failed_ids)]
    logger.info("synth: %d planned, %d already ok, %d to run", len(plans), len(ok_ids & {p["id"] for p in plans}),
                len(todo))

    init_ray(config.ray)
    started = time.monotonic()
    skipped = 0
    if todo:
        capped = synth.budget_usd is not None or synth.budget_tokens is not None
        # the budget holds per run dir: what earlier runs here spent counts against it
        budget = BudgetActor.remote(synth.budget_usd, synth.budget_tokens, spent) if capped else None
        needed = {plan["source_id"] for plan in todo}
        texts = ray.put({s["source_id"]: s["source_text"] for s in sources if s["source_id"] in needed})
        try:
            _write_records(config, todo, records_dir, fingerprint, budget, texts)
            skipped = ray.get(budget.skipped.remote()) if budget is not None else 0
        finally:  # the run's budget actor ends with it, also in a long-lived Ray session
            if budget is not None:
                ray.kill(budget)
    elapsed = time.monotonic() - started

    summary = summarize(iter_record_tables(records_dir, columns=["error", "usage"]), plans, elapsed, len(todo), skipped)
    summary["set_aside_files"] = len(list(records_dir.rglob(f"*{SET_ASIDE_MARK}*")))  # damaged, their rows redone
    if synth.quotas.active():
        summary["quotas"] = quota_summary(plans, records_dir, synth.quotas)
    write_json(layout.synth_summary, summary)
    logger.info("synth summary:\n%s", format_summary(summary))
    return records_dir


def quota_summary(plans: list[dict[str, Any]], records_dir: Path, quotas) -> dict[str, Any]:
    """Target vs achieved per controlled dimension: in the plan (dealt exactly) and among the ok records (what
    failures left of it)."""
    from sefl_ray.data.quotas import achieved

    planned = {plan["id"] for plan in plans}
    made = [row for table in iter_record_tables(records_dir, columns=["mistake_kinds", "subject", "level",
                                                                      "language"])
            for row in table.to_pylist() if row["id"] in planned and row["status"] == "ok"]
    return {"planned": achieved(plans, quotas), "ok": achieved(made, quotas)}


def synth_fingerprint(config: SeflConfig) -> str:
    """What decides each conversation's content, not how many there are: the row ids hash it, so a bigger run
    re-uses every row a smaller one made."""
    synth = config.synth
    content = decided_by(synth, ("content",))
    if not synth.quotas.active():  # they decide nothing then: rows made before quotas existed keep their ids
        content.pop("quotas")
        content["sources"].pop("subject_column")
    return config_fingerprint({
        **content,
        "teacher_models": sorted({config.endpoint(name).model for name in synth.endpoint_names("teacher")}),
        "student_models": sorted({config.endpoint(name).model for name in synth.endpoint_names("student")}),
        "seed": config.seed,
        "prompt_version": PROMPT_VERSION,
    })


def stage_inputs(config: SeflConfig) -> dict[str, Any]:
    """What else decides synth's rows (the registry's `extra_inputs`): the models per role, so swapping teacher and
    student counts, and the prompts' version. An unknown endpoint name is left for the stage to report."""
    synth = config.synth
    return {f"{role}_models": sorted({str(model) for model in
                                      config.endpoint_models(synth.endpoint_names(role)).values()})
            for role in ("teacher", "student")} | {"prompt_version": PROMPT_VERSION}


def manifest_numbers(layout: RunLayout) -> dict[str, Any]:
    summary = json.loads(layout.synth_summary.read_text())
    return {**summary["usage"], "rows": summary["ok"] + summary["failed"], "ok": summary["ok"],
            "failed": summary["failed"]}


def plan_conversations(
    config: SeflConfig, fingerprint: str, sources: list[dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Every conversation this config asks for, each with its passage, mistakes, seed and, under quotas, its
    subject, grade band and language (`sefl_ray.synth.sampling`).

    A plan names its passage by `source_id` only: the texts travel once, in a table every actor reads, so the
    driver's memory does not grow with samples per passage. Under quotas a row's id also hashes what was dealt to
    it, so a run with other quotas or another size never takes a row made for a different draw."""
    from sefl_ray.synth.sampling import deal_mistake_kinds, plan_slots

    synth = config.synth
    quotas = synth.quotas
    slots = plan_slots(synth, sources if sources is not None else load_sources(synth.sources), config.seed)
    if not quotas.active():
        return [_drawn_plan(config, slot, fingerprint) for slot in slots]
    counts = [slot["num_mistakes"] or random.Random(
        f"{config.seed}:{slot['source']['source_id']}:{slot['sample_index']}:count").randint(
        synth.min_mistakes, synth.max_mistakes) for slot in slots]
    dealt_kinds = (deal_mistake_kinds(counts, quotas, random.Random(f"{config.seed}:kinds"))
                   if quotas.mistake_kinds else [None] * len(slots))
    plans = []
    for slot, count, kinds in zip(slots, counts, dealt_kinds):
        source = slot["source"]
        drawn = {"subject": source.get("subject") if quotas.subject else None, "level": slot["level"],
                 "language": slot["language"]}
        row_id = record_id(source["source_id"], slot["sample_index"],
                           f"{fingerprint}:{json.dumps(drawn, sort_keys=True)}:{count}:{kinds}")
        rng = random.Random(f"{config.seed}:{row_id}")
        if kinds is None:
            kinds = _kinds(rng, synth.mistake_kinds, count)
        plans.append({"id": row_id, "source_id": source["source_id"], "sample_index": slot["sample_index"],
                      "mistake_kinds": kinds, "seed": rng.randrange(2**31), **drawn})
    return plans


def _drawn_plan(config: SeflConfig, slot: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """A plan without quotas: its mistakes and seed drawn from its id, exactly as before quotas existed, so earlier
    run dirs resume."""
    synth = config.synth
    row_id = record_id(slot["source"]["source_id"], slot["sample_index"], fingerprint)
    rng = random.Random(f"{config.seed}:{row_id}")
    kinds = _kinds(rng, synth.mistake_kinds, rng.randint(synth.min_mistakes, synth.max_mistakes))
    return {"id": row_id, "source_id": slot["source"]["source_id"], "sample_index": slot["sample_index"],
            "mistake_kinds": kinds, "seed": rng.randrange(2**31), "subject": None, "level": None, "language": None}


def _kinds(rng: random.Random, kinds: list[str], count: int) -> list[str]:
    return rng.sample(kinds, count) if count <= len(kinds) else rng.choices(kinds, k=count)


def _write_records(config, todo, records_dir: Path, fingerprint: str, budget, texts) -> None:
    synth = config.synth
    job = EndpointBatch(
        label="synth", endpoints=synth.endpoint_names("teacher") + synth.endpoint_names("student"),
        row_fn=conversation_row, failed_row=failed_conversation_row, schema=RECORD_SCHEMA, concurrency=synth.concurrency, batch_size=synth.batch_size,
        num_actors=synth.num_actors,
        cache_dir=RunLayout(config.run_dir).synth_call_cache if synth.cache_calls else None,
        setup=conversation_state, context={"fingerprint": fingerprint, "budget": budget, "texts": [texts]})
    run_endpoint_batches(config, todo, job, new_parts_dir(records_dir))


@dataclass
class ConversationState:
    """What each actor holds for its conversations: the passages, the settings, the budget."""

    config: SeflConfig
    texts: dict[str, str]
    settings: Any
    budget: Any


def conversation_state(config: SeflConfig, context: dict[str, Any]) -> ConversationState:
    from sefl_ray.synth.conversation import ConversationSettings

    logging.getLogger("autogen_core").setLevel(logging.WARNING)
    logging.getLogger("autogen_agentchat").setLevel(logging.WARNING)
    synth = config.synth
    settings = ConversationSettings(
        preset=synth.preset, json_mode=synth.json_mode, temperature=synth.temperature,
        max_new_tokens=min(synth.max_new_tokens, 256) if synth.preset == "sefl" else synth.max_new_tokens,
        max_turns=synth.max_turns, config_fingerprint=context["fingerprint"],
    )
    texts = ray.get(context["texts"][0])  # in a list: Ray resolves only top-level references
    return ConversationState(config, texts, settings, context["budget"])


async def conversation_row(row: dict[str, Any], clients: dict[str, Any], state: ConversationState) -> RowOutcome:
    """One conversation, unless the budget is spent. Several endpoints per role share the load, each conversation
    pinned to one by its id so a re-run asks the same endpoint."""
    from sefl_ray.synth.conversation import ConversationPlan, run_conversation

    if state.budget is not None and not await state.budget.try_start.remote():
        return RowOutcome(None, "skipped")
    plan = ConversationPlan(source_text=state.texts[row["source_id"]], **row)
    teacher, student = _pinned_endpoints(plan.id, state.config)
    record = await run_conversation(plan, clients[teacher], clients[student], state.settings)
    usage = Usage()
    for entry in record["usage"]:
        add_role_usage(usage, entry)
    if state.budget is not None:
        await state.budget.charge.remote(usage.tokens, usage.cost_usd)
    return RowOutcome(record, record["status"], usage)


def retry_seed(seed: int, failed_attempts: int) -> int:
    """The plan's seed on a first attempt; another, fixed by the attempt, on each retry."""
    return seed if not failed_attempts else random.Random(f"{seed}:retry:{failed_attempts}").randrange(2**31)


def failed_conversation_row(row: dict[str, Any], reason: str, state: ConversationState) -> dict[str, Any]:
    from sefl_ray.synth.conversation import ConversationPlan, failed_record

    plan = ConversationPlan(source_text=state.texts.get(row["source_id"], ""), **row)
    teacher, student = _pinned_endpoints(plan.id, state.config)
    return failed_record(plan, state.config.endpoint(teacher).model, state.config.endpoint(student).model,
                         state.settings, reason)


def _pinned_endpoints(row_id: str, config: SeflConfig) -> tuple[str, str]:
    slot = int(row_id[:8], 16)
    teachers, students = config.synth.endpoint_names("teacher"), config.synth.endpoint_names("student")
    return teachers[slot % len(teachers)], students[slot % len(students)]


class _Budget:
    """Counts what the run has spent, across every actor, and says whether another conversation may start."""

    def __init__(self, max_usd: float | None, max_tokens: int | None, spent: Usage):
        self.max_usd, self.max_tokens = max_usd, max_tokens
        self.usd, self.tokens, self._skipped = spent.cost_usd or 0.0, spent.tokens, 0

    def try_start(self) -> bool:
        over = (self.max_usd is not None and self.usd >= self.max_usd) or (
            self.max_tokens is not None and self.tokens >= self.max_tokens)
        self._skipped += over
        return not over

    def charge(self, tokens: int, usd: float | None) -> None:
        self.tokens += tokens
        self.usd += usd or 0.0

    def skipped(self) -> int:
        return self._skipped


BudgetActor = ray.remote(num_cpus=0)(_Budget)


def summarize(records: Iterable[pa.Table], plans: list[dict], elapsed_s: float, attempted: int, skipped: int) -> dict:
    planned_ids = {p["id"] for p in plans}
    ok = done = 0
    by_role: dict[str, Usage] = {}
    reasons: dict[str, int] = {}
    for table in records:  # a file at a time: the driver's memory does not grow with the run
        for row in table.to_pylist():
            if row["id"] not in planned_ids:
                continue
            done += 1
            ok += row["status"] == "ok"
            if row["status"] != "ok":
                reason = (row["error"] or "unknown").split(":")[0]
                reasons[reason] = reasons.get(reason, 0) + 1
            for entry in row["usage"] or []:
                add_role_usage(by_role.setdefault(f"{entry['role']}:{entry['model']}", Usage()), entry)
    return {
        "planned": len(plans), "ok": ok, "failed": done - ok, "missing": len(plans) - done,
        "skipped_by_budget": skipped, "attempted_this_run": attempted, "elapsed_s": round(elapsed_s, 3),
        "conversations_per_s": round(attempted / elapsed_s, 3) if elapsed_s > 0 else None,
        "usage": sum(by_role.values(), Usage()).to_dict(),
        "usage_by_role": {key: usage.to_dict() for key, usage in by_role.items()}, "failure_reasons": reasons,
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"ok {summary['ok']}  failed {summary['failed']}  missing {summary['missing']}  "
        f"skipped by budget {summary['skipped_by_budget']}  "
        f"({summary['attempted_this_run']} run in {summary['elapsed_s']:.1f} s, "
        f"{summary['conversations_per_s'] or 0:.2f} conversations/s)",
        f"{'role:model':<40} {'calls':>7} {'retries':>7} {'prompt_tok':>10} {'compl_tok':>10} {'cost_usd':>9}",
    ]
    for key, total in summary["usage_by_role"].items():
        usage = Usage.from_dict(total)
        lines.append(f"{key:<40} {usage.calls:>7} {usage.retries:>7} {usage.prompt_tokens:>10} "
                     f"{usage.completion_tokens:>10} {usage.cost_text():>9}")
    for reason, count in summary["failure_reasons"].items():
        lines.append(f"failed: {count} x {reason}")
    return "\n".join(lines)
