"""`SeflConfig`: the whole run, one section per stage plus what the stages share."""

from __future__ import annotations

from pydantic import field_validator

from sefl_ray.config.annotate import AnnotateConfig
from sefl_ray.config.gate import GateConfig
from sefl_ray.config.schema import Field, StrictModel
from sefl_ray.config.sections import (
    EndpointConfig, ExportConfig, InferConfig, JudgeConfig, ModelsConfig, RayConfig, RetryConfig, SynthConfig,
)
from sefl_ray.config.serve import LocalServeConfig
from sefl_ray.config.train import TrainConfig
from sefl_ray.errors import ConfigError


class SeflConfig(StrictModel):
    """The whole run: shared settings and one section per stage."""

    run_dir: str = Field(
        "runs/local", decides="execution",
        description="Where every stage writes its outputs: a local or mounted path (NFS, Lustre, a "
        "PVC); on a cluster, one every node sees. Object-store URIs work for train.storage_path only.",
    )
    seed: int = Field(
        0, decides="content",
        description="Seed for sampling, splits, training, and the `seed` every "
                      "infer and judge request sends.",
    )
    progress_interval_s: float = Field(
        5.0, decides="execution", gt=0, le=60,
        description="Seconds between progress updates of synth, infer and judge (done, failed, "
        "tokens, cost, ETA): a bar on a terminal, one log line per interval elsewhere.",
    )
    ray: RayConfig = Field(decides="execution", default_factory=RayConfig)
    retry: RetryConfig = Field(decides="execution", default_factory=RetryConfig)
    endpoints: list[EndpointConfig] = Field(
        decides="execution", default_factory=list,
        description="OpenAI-compatible endpoints the stages may call, by name (a stage's fingerprint hashes the "
        "models of the endpoints it calls).",
    )
    models: ModelsConfig = Field(decides="content", default_factory=ModelsConfig)
    synth: SynthConfig = Field(decides="content", default_factory=SynthConfig)
    gate: GateConfig = Field(decides="content", default_factory=GateConfig)
    export: ExportConfig = Field(decides="content", default_factory=ExportConfig)
    serve: LocalServeConfig = Field(decides="content", default_factory=LocalServeConfig)
    infer: InferConfig = Field(decides="content", default_factory=InferConfig)
    train: TrainConfig = Field(decides="content", default_factory=TrainConfig)
    judge: JudgeConfig = Field(decides="content", default_factory=JudgeConfig)
    annotate: AnnotateConfig = Field(decides="content", default_factory=AnnotateConfig)

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names_unique(cls, endpoints: list[EndpointConfig]) -> list[EndpointConfig]:
        names = [endpoint.name for endpoint in endpoints]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"endpoint name(s) {', '.join(repeated)} used twice; give each endpoint its own name")
        return endpoints

    @field_validator("run_dir")
    @classmethod
    def _run_dir_is_a_path(cls, run_dir: str) -> str:
        # pathlib would quietly turn "s3://bucket/run" into a local folder "s3:/bucket/run": refuse it instead.
        if "://" in run_dir:
            raise ValueError(f"{run_dir!r} is a URI; run_dir must be a local or mounted path (object storage is "
                             "supported for train.storage_path, Ray Train's checkpoints)")
        return run_dir

    def endpoint(self, name: str) -> EndpointConfig:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        known = ", ".join(e.name for e in self.endpoints) or "none"
        raise ConfigError(f"no endpoint named '{name}' in endpoints (known: {known})")

    def endpoint_models(self, names: list[str]) -> dict[str, str | None]:
        """Model per endpoint name, what a fingerprint hashes; an unknown name is left for the stage to report."""
        known = {endpoint.name: endpoint.model for endpoint in self.endpoints}
        return {name: known.get(name) for name in names}
