"""API keys of the endpoints a run may call (their schema, `EndpointConfig`, is in `sefl_ray.config`).

Keys are read from the environment variable the config names, at the moment a client is built, so they never sit
in a config object, a saved YAML, a log line or an output row.
"""

from __future__ import annotations

import os

from sefl_ray.config import EndpointConfig
from sefl_ray.errors import MissingSecretError


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
