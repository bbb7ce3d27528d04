"""`sefl-ray infer`: generate feedback for a test set on Ray Data, with local model actors or a remote endpoint.

Local mode runs one batched `generate` per Ray Data batch in model actors (the same engine the Serve app uses);
endpoint mode runs many async calls per actor through the endpoint layer's limiter and retries. Either way every
input row gives one output row: a failed one keeps its reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from sefl_ray.cluster import init_ray
from sefl_ray.config import SeflConfig, log_resolved_config, save_resolved_config
from sefl_ray.data.sft import to_chat_messages
from sefl_ray.data.tables import read_rows
from sefl_ray.errors import ConfigError, InputNotFoundError
from sefl_ray.layout import RunLayout
from sefl_ray.llm.usage import Usage, usage_of_rows
from sefl_ray.progress import RowTally, track_progress

logger = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("prompt", pa.string()), ("feedback", pa.string()), ("system", pa.string()),
    ("model", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()), ("latency_s", pa.float64()), ("status", pa.string()), ("error", pa.string()),
])


def run_infer(config: SeflConfig) -> Path:
    settings = config.infer
    layout = RunLayout(config.run_dir)
    out_dir = layout.infer_system_dir(settings.name)
    items = load_items(config)
    if settings.mode == "endpoint":
        from sefl_ray.llm.endpoint import check_api_keys

        check_api_keys([config.endpoint(settings.endpoint)])
    log_resolved_config(config, "infer")
    save_resolved_config(config, out_dir)
    init_ray(config.ray)
    started = time.monotonic()
    with track_progress(f"infer {settings.name}", len(items), config.progress_interval_s) as progress:
        dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / settings.batch_size)))
        worker_kwargs = {"config_json": config.model_dump_json(), "progress": progress}
        if settings.mode == "local":
            outputs = dataset.map_batches(
                LocalModelWorker, fn_constructor_kwargs=worker_kwargs,
                batch_size=settings.batch_size, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=settings.num_actors), num_cpus=1,
            )
        else:  # callers: as few as the endpoint's per-process cap allows, `concurrency` calls across them all
            callers = math.ceil(settings.concurrency / config.endpoint(settings.endpoint).max_concurrency)
            outputs = dataset.map_batches(
                EndpointWorker, fn_constructor_kwargs=worker_kwargs,
                batch_size=settings.batch_size, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=callers, max_concurrent_calls_per_actor=max(
                    1, math.ceil(settings.concurrency / (callers * settings.batch_size)))),
                num_cpus=0.1,  # waits on the network: must not starve the read task of CPU
            )
        # a test set is small: gather it in the driver and write one file that every later stage reads
        table = pa.concat_tables(list(outputs.iter_batches(batch_format="pyarrow", batch_size=None)))
    out_dir.mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    pq.write_table(table.cast(OUTPUT_SCHEMA), layout.infer_outputs(settings.name))
    statuses = table["status"].to_pylist()
    usage = usage_of_rows(table.select(["prompt_tokens", "completion_tokens", "cost_usd", "status"]).to_pylist())
    summary = {"rows": len(statuses), "ok": statuses.count("ok"), "failed": len(statuses) - statuses.count("ok"),
               "elapsed_s": round(time.monotonic() - started, 3), "mode": settings.mode, "usage": usage.to_dict()}
    layout.infer_summary(settings.name).write_text(json.dumps(summary, indent=2))
    logger.info("infer %s: %s", settings.name, summary)
    return layout.infer_outputs(settings.name)


def run_base_and_tuned(config: SeflConfig) -> list[Path]:
    """The pipeline's infer stage: feedback of the base model and of the fine-tuned one on the held-out split, the
    two systems judged next. Both run as local model actors (`infer.mode: local`), so no server is needed for
    models that exist only as folders of this run."""
    outputs = []
    for name, model in (("base", config.train.model), ("tuned", str(RunLayout(config.run_dir).train_merged))):
        infer = config.infer.model_copy(update={"name": name, "model": model, "mode": "local"})
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


def _output_row(item: dict[str, Any], model: str, **fields: Any) -> dict[str, Any]:
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
                rows[index] = _output_row(items[index], self.settings.model, status="failed", error=str(exc))
        started = time.monotonic()
        results = self.engine.generate([requests[i] for i in runnable]) if runnable else []
        latency = time.monotonic() - started
        for index, result in zip(runnable, results):
            rows[index] = _output_row(items[index], self.settings.model, feedback=result.text,
                                      prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                                      latency_s=latency)
        for row in rows:  # the model's own compute: no price
            self.progress.add(row["status"], row["prompt_tokens"] + row["completion_tokens"], 0.0)
        self.progress.flush()
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


class EndpointWorker:
    """A Ray Data actor calling an endpoint: every row of a batch in flight at once."""

    def __init__(self, config_json: str, progress=None):
        self.config = SeflConfig.model_validate_json(config_json)
        self.progress = RowTally(progress)
        self._client = None

    async def __call__(self, batch: pa.Table) -> pa.Table:
        from sefl_ray.llm.client import EndpointCallFailed, EndpointClient

        settings = self.config.infer
        if self._client is None:
            self._client = EndpointClient(self.config.endpoint(settings.endpoint), self.config.retry)
        model = self._client.endpoint.model

        async def one(item):
            try:
                result = await self._client.chat(json.loads(item["messages"]), max_tokens=settings.max_new_tokens,
                                                 temperature=settings.temperature, seed=self.config.seed)
            except EndpointCallFailed as failure:
                self.progress.add("failed", 0, failure.record.cost_usd)
                return _output_row(item, model, status="failed", error=failure.record.error,
                                   latency_s=failure.record.latency_s, cost_usd=failure.record.cost_usd)
            record = result.record
            self.progress.add("ok", record.prompt_tokens + record.completion_tokens, record.cost_usd)
            return _output_row(item, model, feedback=result.text, prompt_tokens=record.prompt_tokens,
                               completion_tokens=record.completion_tokens, latency_s=record.latency_s,
                               cost_usd=record.cost_usd)

        rows = await asyncio.gather(*(one(item) for item in batch.to_pylist()))
        self.progress.flush()
        return pa.Table.from_pylist(list(rows), schema=OUTPUT_SCHEMA)
