"""`infer.mode: vllm`: the test set through Ray Data LLM (`ray.data.llm.build_processor` with a vLLM engine), the
batch path cluster users expect, with the same output rows as the other modes.

Ray Data LLM templates the chat, tokenizes, runs vLLM's continuous batching in `num_actors` engine actors and
detokenizes. `should_continue_on_error` is on: a row vLLM refuses (a prompt over the context) comes back with its
error, and becomes a failed row with that reason; the rest of its batch is answered. Failed rows skip Ray Data LLM's
postprocess, so the rows are shaped here, after the processor, for ok and failed rows alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from sefl_ray.config import SeflConfig
from sefl_ray.config.sections import InferConfig

ERROR_COLUMN = "__inference_error__"


def engine_kwargs(settings: InferConfig) -> dict[str, Any]:
    """vLLM's engine arguments: the run's parallelism, CPU-friendly defaults where there is no GPU, then the
    config's own `engine_kwargs` over them."""
    from sefl_ray.serve.vllm_app import CPU_ENGINE_DEFAULTS

    kwargs: dict[str, Any] = {"tensor_parallel_size": settings.tensor_parallel_size, "max_num_seqs":
                              settings.batch_size}
    if settings.num_gpus_per_actor == 0:
        kwargs.update(CPU_ENGINE_DEFAULTS)
    kwargs.update(settings.engine_kwargs)
    return kwargs


def placement(settings: InferConfig) -> dict[str, Any]:
    """One bundle per vLLM worker: CPUs only without GPUs (Ray Data LLM asks for a GPU by default)."""
    if settings.num_gpus_per_actor == 0:
        return {"bundles": [{"CPU": 1}]}
    return {"bundles": [{"GPU": settings.num_gpus_per_actor, "CPU": 1}] * settings.tensor_parallel_size}


def run_vllm_batches(config: SeflConfig, items: list[dict[str, Any]], parts: Path) -> None:
    """Answer `items` with vLLM on Ray Data and write the output rows under `parts`."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from sefl_ray.infer.run import OUTPUT_SCHEMA
    from sefl_ray.models import resolve_model
    settings = config.infer
    sampling = {"temperature": settings.temperature, "max_tokens": settings.max_new_tokens, "seed": config.seed}
    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=resolve_model(settings.model), engine_kwargs=engine_kwargs(settings),
            batch_size=settings.batch_size, concurrency=settings.num_actors, should_continue_on_error=True,
            placement_group_config=placement(settings), log_engine_metrics=False,
        ),
        preprocess=lambda item: {"item_id": item["item_id"], "messages_json": item["messages"],
                                 "messages": json.loads(item["messages"]), "sampling_params": sampling},
    )
    model = settings.model

    def output_rows(batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([_output_row(row, model) for row in batch.to_pylist()], schema=OUTPUT_SCHEMA)

    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items) // settings.batch_size))
    processor(dataset).map_batches(output_rows, batch_format="pyarrow", num_cpus=0).write_parquet(str(parts))


def _output_row(row: dict[str, Any], model: str) -> dict[str, Any]:
    from sefl_ray.infer.run import output_row

    item = {"item_id": row["item_id"], "messages": row["messages_json"]}
    if row.get(ERROR_COLUMN):
        return output_row(item, model, status="failed", error=str(row[ERROR_COLUMN]))
    return output_row(item, model, feedback=row["generated_text"], prompt_tokens=int(row["num_input_tokens"]),
                      completion_tokens=int(row["num_generated_tokens"]),
                      latency_s=max(0.0, float(row.get("time_taken_llm") or 0.0)))
