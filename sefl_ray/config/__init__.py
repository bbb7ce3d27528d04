"""Typed configs for every stage, loaded from one YAML file with `--set a.b=c` overrides.

One root model (`SeflConfig`) holds a section per stage plus what they share (run dir, Ray, endpoints, retries), so
the same file drives `sefl-ray pipeline` and each stage alone. Every field has a default that works on a laptop;
unknown keys and wrong types are errors that name the key. Every field is marked with what it decides (`schema.py`),
and the stage fingerprints are derived from those marks. This package imports no stage.
"""

from sefl_ray.config.annotate import AnnotateConfig, QuestionConfig
from sefl_ray.config.gate import DedupConfig, FormatGateConfig, GateConfig
from sefl_ray.config.loading import (
    config_as_yaml, config_fingerprint, load_config, log_resolved_config, redact_secrets, redact_text, redacted_dump,
    save_resolved_config,
)
from sefl_ray.config.root import SeflConfig
from sefl_ray.config.schema import StrictModel, decided_by
from sefl_ray.config.sections import (
    EndpointConfig, ExportConfig, InferConfig, JudgeConfig, ModelsConfig, QuotaConfig, RayConfig, RetryConfig,
    SourcesConfig, SynthConfig,
)
from sefl_ray.config.serve import AutoscalingSettings, LocalServeConfig, ServeAppConfig
from sefl_ray.config.train import DeepSpeedSettings, FsdpSettings, LoraSettings, TrainConfig

__all__ = [
    "AnnotateConfig", "AutoscalingSettings", "DedupConfig", "DeepSpeedSettings", "EndpointConfig", "ExportConfig",
    "FormatGateConfig", "FsdpSettings", "GateConfig",
    "InferConfig", "JudgeConfig", "LocalServeConfig", "LoraSettings", "ModelsConfig", "QuestionConfig", "QuotaConfig", "RayConfig",
    "RetryConfig", "SeflConfig", "ServeAppConfig", "SourcesConfig", "StrictModel", "SynthConfig", "TrainConfig",
    "config_as_yaml", "config_fingerprint", "decided_by", "load_config", "log_resolved_config", "redact_secrets",
    "redact_text", "redacted_dump", "save_resolved_config",
]
