"""`sefl-ray infer`: generate feedback for a test set on Ray Data, with local model actors, vLLM, or an endpoint.

Local mode runs one batched `generate` per Ray Data batch in model actors (the same engine the Serve app uses);
vllm mode runs Ray Data LLM's vLLM processor (`sefl_ray.infer.vllm_mode`); endpoint mode runs many async calls per
actor through the endpoint layer's limiter and retries. Either way every input row gives one output row: a failed
one keeps its reason.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from sefl_ray.cluster import init_ray
from sefl_ray.config import SeflConfig, log_resolved_config, save_resolved_config
from sefl_ray.data.sft import to_chat_messages
from sefl_ray.data.tables import read_rows
from sefl_ray.durable import write_json, write_parquet
from sefl_ray.errors import ConfigError, InputNotFoundError
from sefl_ray.layout import RunLayout
from sefl_ray.llm.batch import EndpointBatch, RowOutcome, new_parts_dir, read_parts, run_endpoint_batches
from sefl_ray.progress import RowTally, track_progress
from sefl_ray.usage import Usage, usage_of, usage_of_rows

logger = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("prompt", pa.string()), ("feedback", pa.string()), ("system", pa.string()),
    ("model", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()), ("latency_s", pa.float64()), ("status", pa.string()), ("error", pa.string()),
])


def run_infer(config: SeflConfig) -> Path:
    settings = config.infer
    settings.check_endpoint_callers()
    layout = RunLayout(config.run_dir)
    out_dir = layout.infer_system_dir(settings.name)
    items = load_items(config)
    if settings.mode == "endpoint":
        from sefl_ray.llm.endpoint import check_api_keys

        check_api_keys([config.endpoint(settings.endpoint)])
    if settings.mode == "vllm":
        from sefl_ray.serve.vllm_app import require_vllm

        require_vllm()  # one line naming the extra, before Ray starts
    log_resolved_config(config, "infer")
    save_resolved_config(config, out_dir)
    init_ray(config.ray)
    started = time.monotonic()
    parts = new_parts_dir(out_dir, ".parts")  # the actors write here; one outputs.parquet is made from it below
    if settings.mode == "vllm":
        from sefl_ray.infer.vllm_mode import run_vllm_batches

        run_vllm_batches(config, items, parts)
    elif settings.mode == "local":
        with track_progress(f"infer {settings.name}", len(items), config.progress_interval_s) as progress:
            dataset = ray.data.from_items(items,
                                          override_num_blocks=max(1, math.ceil(len(items) / settings.batch_size)))
            dataset.map_batches(
                LocalModelWorker, fn_constructor_kwargs={"config_json": config.model_dump_json(), "progress": progress},
                batch_size=settings.batch_size, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=settings.num_actors), num_cpus=1,
                num_gpus=settings.num_gpus_per_actor,
            ).write_parquet(str(parts))
    else:
        job = EndpointBatch(label=f"infer {settings.name}", endpoints=[settings.endpoint], row_fn=endpoint_row,
                            failed_row=failed_output_row, schema=OUTPUT_SCHEMA, concurrency=settings.concurrency, batch_size=settings.batch_size)
        run_endpoint_batches(config, items, job, parts)
    # a test set is small: every later stage reads one file, in the input's order
    table = read_parts(parts, OUTPUT_SCHEMA, key="item_id")
    order = {item["item_id"]: index for index, item in enumerate(items)}
    ids = table["item_id"].to_pylist()
    table = table.take(sorted(range(len(ids)), key=lambda i: order.get(ids[i], len(order))))
    write_parquet(layout.infer_outputs(settings.name), table)
    shutil.rmtree(parts, ignore_errors=True)
    statuses = table["status"].to_pylist()
    usage = usage_of_rows(table.select(["prompt_tokens", "completion_tokens", "cost_usd", "status"]).to_pylist())
    summary = {"rows": len(statuses), "ok": statuses.count("ok"), "failed": len(statuses) - statuses.count("ok"),
               "elapsed_s": round(time.monotonic() - started, 3), "mode": settings.mode, "usage": usage.to_dict()}
    write_json(layout.infer_summary(settings.name), summary)
    logger.info("infer %s: %s", settings.name, summary)
    return layout.infer_outputs(settings.name)


def run_base_and_tuned(config: SeflConfig) -> list[Path]:
    """The pipeline's infer stage: feedback of the base model and of the fine-tuned one on the held-out split, the
    two systems judged next. Both run on Ray itself, as model actors (`infer.mode: local`) or vLLM engines
    (`infer.mode: vllm`), so no server is needed for models that exist only as folders of this run."""
    outputs = []
    mode = "vllm" if config.infer.mode == "vllm" else "local"
    for name, model in (("base", config.train.model), ("tuned", str(RunLayout(config.run_dir).train_merged))):
        infer = config.infer.model_copy(update={"name": name, "model": model, "mode": mode})
        outputs.append(run_infer(config.model_copy(update={"infer": infer})))
    return outputs


def manifest_numbers(layout: RunLayout) -> dict[str, Any]:
    systems, usage = {}, Usage()
    for outputs in layout.all_infer_outputs():
        summary = json.loads(layout.infer_summary(outputs.parent.name).read_text())
        systems[outputs.parent.name] = {"rows": summary["rows"], "ok": summary["ok"], "failed": summary["failed"]}
        usage += Usage.from_dict(summary.get("usage") or {})
    return {"rows": sum(system["rows"] for system in systems.values()), "systems": systems, **usage.to_dict()}


def load_items(config: SeflConfig) -> list[dict[str, Any]]:
    """Rows as {item_id, messages}: our export, SEFL-style parquet/jsonl, or plain `messages` data."""
    settings = config.infer
    path = Path(settings.input) if settings.input else RunLayout(config.run_dir).export_hf
    if not path.exists():
        raise InputNotFoundError(f"infer.input: {path} does not exist (run `sefl-ray export` or set infer.input)")
    rows = read_rows(path, key="infer.input", split=settings.split)
    items = []
    for index, row in enumerate(rows[: settings.limit] if settings.limit else rows):
        items.append({"item_id": str(row.get("id", index)), "messages": json.dumps(_prompt_messages(row, path))})
    if not items:
        raise InputNotFoundError(f"infer.input: {path} has no rows")
    return items


def _prompt_messages(row: dict[str, Any], path: Path) -> list[dict[str, str]]:
    """The generation prompt: the row's chat without its assistant answer."""
    if row.get("messages"):
        messages = [dict(m) for m in row["messages"]]
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        return messages
    if row.get("assignment") is not None and row.get("submission") is not None:
        return to_chat_messages(row["assignment"], row["submission"])
    if row.get("prompt"):
        return [{"role": "user", "content": row["prompt"]}]
    raise ConfigError(f"infer.input: {path} rows need `messages`, `prompt`, or `assignment` + `submission`")


def failed_output_row(item: dict[str, Any], reason: str, config: SeflConfig) -> dict[str, Any]:
    return output_row(item, config.endpoint(config.infer.endpoint).model, status="failed", error=reason,
                       cost_usd=None)


def output_row(item: dict[str, Any], model: str, **fields: Any) -> dict[str, Any]:
    messages = json.loads(item["messages"])
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    prompt = "\n\n".join(m["content"] for m in messages if m["role"] == "user")
    row = {"item_id": item["item_id"], "prompt": prompt, "system": system, "model": model, "feedback": None,
           "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "latency_s": 0.0, "status": "ok",
           "error": None}
    row.update(fields)
    return row


class LocalModelWorker:
    """A Ray Data actor holding the model; one batched generate per batch."""

    def __init__(self, config_json: str, progress=None):
        from sefl_ray.serve.engine import TransformersEngine

        config = SeflConfig.model_validate_json(config_json)
        self.settings, self.seed = config.infer, config.seed
        self.progress = RowTally(progress)
        self.engine = TransformersEngine(self.settings.model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from sefl_ray.serve.engine_api import GenerationRequest

        items = batch.to_pylist()
        requests = [GenerationRequest(messages=json.loads(item["messages"]), max_tokens=self.settings.max_new_tokens,
                                      temperature=self.settings.temperature, seed=self.seed) for item in items]
        rows = [None] * len(items)
        runnable = []
        for index, request in enumerate(requests):
            try:
                self.engine.check(request)
                runnable.append(index)
            except ValueError as exc:  # a prompt too long for the model is that row's failure, not the run's
                rows[index] = output_row(items[index], self.settings.model, status="failed", error=str(exc))
        started = time.monotonic()
        results = self.engine.generate([requests[i] for i in runnable]) if runnable else []
        latency = time.monotonic() - started
        for index, result in zip(runnable, results):
            rows[index] = output_row(items[index], self.settings.model, feedback=result.text,
                                      prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                                      latency_s=latency)
        for row in rows:  # the model's own compute: no price
            self.progress.add(row["status"], Usage(prompt_tokens=row["prompt_tokens"],
                                                   completion_tokens=row["completion_tokens"]))
        self.progress.flush()
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


async def endpoint_row(item: dict[str, Any], clients: dict[str, Any], config: SeflConfig) -> RowOutcome:
    """One test row through the endpoint; a call that fails for good is a failed row with its reason."""
    from sefl_ray.llm.client import EndpointCallFailed

    settings = config.infer
    client = clients[settings.endpoint]
    try:
        result = await client.chat(json.loads(item["messages"]), max_tokens=settings.max_new_tokens,
                                   temperature=settings.temperature, seed=config.seed)
    except EndpointCallFailed as failure:
        record = failure.record
        return RowOutcome(output_row(item, client.endpoint.model, status="failed", error=record.error,
                                      latency_s=record.latency_s, cost_usd=record.cost_usd),
                          "failed", usage_of([record]))
    record = result.record
    row = output_row(item, client.endpoint.model, feedback=result.text, prompt_tokens=record.prompt_tokens,
                      completion_tokens=record.completion_tokens, latency_s=record.latency_s, cost_usd=record.cost_usd)
    return RowOutcome(row, "ok", usage_of([record]))
