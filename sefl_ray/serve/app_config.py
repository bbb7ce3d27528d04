"""What a Serve app's config decides before any replica starts: the args checked in one line, the key read (auth
fails closed), the engine a replica builds, and the replicas and resources Serve gives the deployment. Both engines'
apps (`transformers` here, `vllm` through Ray Serve LLM) start from these."""

import os
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from ray.serve.exceptions import RayServeException

from sefl_ray.config import ServeAppConfig
from sefl_ray.errors import ConfigError
from sefl_ray.serve.engine_api import Engine


class ServeConfigError(ConfigError, RayServeException):
    """A ConfigError that Ray Serve reports as its message alone: Serve's build task returns a RayServeException's
    text as the app's status (`serve run`, `serve status`, a RayService's status) where any other exception becomes
    a traceback. The sefl-ray CLI prints it in one line like every SeflError."""


def load_app_config(args: dict[str, Any] | ServeAppConfig | None) -> ServeAppConfig:
    """Validate a Serve config file's `args`; raises ServeConfigError naming the bad field."""
    if isinstance(args, ServeAppConfig):
        return args
    try:
        return ServeAppConfig.model_validate(args or {})
    except ValidationError as error:  # one line, as Serve and the CLI print it
        problems = [f"{'.'.join(map(str, problem['loc'])) or '(top level)'}: {problem['msg']}"
                    for problem in error.errors()]
        raise ServeConfigError(f"serve app args: {'; '.join(problems)}") from None


def api_key(env_var: str | None) -> str | None:
    """The key clients must send, read from `env_var`; None only for `api_key_env: null`, the explicit opt-out.

    Fails closed: a named variable that is unset or empty raises, so an app meant to need a key never serves
    everyone because a secret was not mounted."""
    if env_var is None:
        return None
    key = os.environ.get(env_var, "").strip()  # a key read from a secret file often ends in a newline
    if not key:
        raise ServeConfigError(
            f"api_key_env names ${env_var}, which is unset or empty where the Serve app starts: set it to the key "
            f"clients must send, or set api_key_env: null to serve without auth"
        )
    return key


def build_engine(config: ServeAppConfig) -> Engine:
    """The transformers engine a replica runs; imported here so that importing this module never loads torch."""
    from sefl_ray.serve.engine import TransformersEngine

    return TransformersEngine(
        config.model, dtype=config.dtype, device=config.device, max_model_len=config.max_model_len,
        grammar_cache_size=config.grammar_cache_size,
    )


EngineFactory = Callable[[ServeAppConfig], Engine]


def deployment_options(config: ServeAppConfig) -> dict[str, Any]:
    """Serve's options for a replica of this app: fixed replicas or autoscaling bounds, concurrency, resources."""
    options: dict[str, Any] = {
        "max_ongoing_requests": config.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
    }
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling.model_dump()
    else:
        options["num_replicas"] = config.num_replicas
    return options
