"""The endpoint config list: which OpenAI-compatible servers a run may call, how hard, and at what price.

Keys are read from the environment variable the config names, at the moment a client is built, so they never sit
in a config object, a saved YAML, a log line or an output row.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from sefl_ray.errors import MissingSecretError


class EndpointConfig(BaseModel):
    """One OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, a sefl-ray Serve app, the loopback test server)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("local", description="Name used by stages to pick this endpoint and in usage reports.")
    model: str = Field("embedded:smollm2-135m", description="Model id sent in each request.")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL, ending in /v1.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key; None for local servers that need no key."
    )
    max_concurrency: int = Field(64, ge=1, description="Calls in flight at once to this endpoint, per process.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute allowed across the whole run; None: no limit.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute allowed across the whole run; None: no limit.")
    timeout_s: float = Field(120.0, gt=0, description="Timeout of one HTTP call, in seconds.")
    price_input_per_1m: float | None = Field(None, ge=0, description="USD per 1M prompt tokens; None: cost unknown.")
    price_output_per_1m: float | None = Field(None, ge=0, description="USD per 1M completion tokens; None: unknown.")


def read_api_key(endpoint: EndpointConfig) -> str:
    """The key for `endpoint`, from its environment variable; local servers without one get a placeholder."""
    if endpoint.api_key_env is None:
        return "EMPTY"
    key = os.environ.get(endpoint.api_key_env)
    if not key:
        raise MissingSecretError(
            f"endpoint '{endpoint.name}' reads its API key from ${endpoint.api_key_env}, which is not set: "
            f"export {endpoint.api_key_env}=... (or set api_key_env: null for a local server)"
        )
    return key


def check_api_keys(endpoints: list[EndpointConfig]) -> None:
    """Fail before any work starts when a key is missing, rather than on the first call hours in."""
    for endpoint in endpoints:
        read_api_key(endpoint)
