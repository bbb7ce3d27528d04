"""The Serve app's schema (`serve run serve_configs/*.yaml` args) and the run's own local app (`serve:`)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from sefl_ray.config.schema import Field, StrictModel


class AutoscalingSettings(StrictModel):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 lets an idle app scale to zero.", decides="execution")
    max_replicas: int = Field(2, ge=1, description="Most replicas.", decides="execution")
    target_ongoing_requests: float = Field(8, gt=0, description="Requests per replica Serve scales towards.", decides="execution")

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingSettings":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class ServeAppConfig(StrictModel):
    """One OpenAI-compatible app: which model, how requests are batched, adapters, auth and replicas."""

    model: str = Field(
        "embedded:smollm2-135m", description="'embedded:<name>', a local HF folder, or a Hub id (loaded offline).", decides="content"
    )
    served_model_name: str | None = Field(None, description="The name clients put in `model`; None: `model`.", decides="content")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="'transformers' runs on CPU or GPU; 'vllm' is not wired here (needs ray[llm]).", decides="content"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights' dtype.", decides="content")
    device: str | None = Field(None, description="'cpu', 'cuda', 'cuda:1'…; None: a GPU if there is one.", decides="execution")
    max_model_len: int | None = Field(None, ge=16, description="Context cap in tokens; None: the model's own.", decides="content")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens of a request that does not set it.", decides="content")
    batching: bool = Field(True, description="Gather concurrent requests into batches; False: one at a time.", decides="execution")
    max_batch_size: int = Field(8, ge=1, description="Most requests in one batch.", decides="execution")
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="How long a batch waits to fill after its first.", decides="execution")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters clients can name in `model`: name -> PEFT folder.", decides="content"
    )
    max_adapters_per_replica: int = Field(4, ge=1, description="Adapters held at once; the least recent goes.", decides="execution")
    api_key_env: str | None = Field(
        None, description="Env var holding the key clients must send as 'Authorization: Bearer'; unset: no auth.", decides="execution"
    )
    num_replicas: int = Field(1, ge=1, description="Fixed replica count, used when `autoscaling` is None.", decides="execution")
    autoscaling: AutoscalingSettings | None = Field(None, description="Replica bounds and target; None: fixed.", decides="execution")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica accepts at once (>= batch size).", decides="execution")
    num_cpus: float = Field(1, ge=0, description="CPUs each replica reserves.", decides="execution")
    torch_threads: int | None = Field(
        None, ge=1, description="Torch threads per replica; None: Ray's default, one per reserved CPU. More than "
        "num_cpus lets a CPU replica use cores it shares with light work (API callers) without reserving them.", decides="execution"
    )
    num_gpus: float = Field(0, ge=0, description="GPUs each replica reserves.", decides="execution")

    @model_validator(mode="after")
    def _consistent(self) -> "ServeAppConfig":
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
        False, description="Start a Ray Serve app on this Ray before the stages that call endpoints (local demo).", decides="execution"
    )
    host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy listens on.", decides="execution")
    port: int = Field(8000, ge=1, le=65535, description="Port of the Serve HTTP proxy.", decides="execution")
    app: ServeAppConfig = Field(
        default_factory=ServeAppConfig, description="The app's model, batching and replicas (ServeAppConfig).", decides="content"
    )
