"""`sefl-ray endpoints`: find a missing key or a dead server in seconds, before a long run finds it for you."""

from __future__ import annotations

import asyncio

from sefl_ray.config import SeflConfig, redact_text
from sefl_ray.errors import SeflError
from sefl_ray.llm.client import EndpointCallFailed, EndpointClient
from sefl_ray.llm.endpoint import check_api_keys


class EndpointUnreachable(SeflError):
    """An endpoint did not answer a one-token call."""


def run_endpoint_check(config: SeflConfig) -> str:
    """One-token call to every endpoint; returns a table, raises naming each endpoint that failed."""
    check_api_keys(config.endpoints)
    if not config.endpoints:
        raise SeflError("the config lists no endpoints: add one under 'endpoints:'")
    results = asyncio.run(_ping_all(config))
    lines = [f"{'endpoint':<20} {'model':<32} {'status':<8} latency_s"]
    failed = []
    for endpoint, outcome in zip(config.endpoints, results):
        if isinstance(outcome, EndpointCallFailed):
            failed.append(f"{endpoint.name} ({redact_text(endpoint.base_url)}): {outcome.record.error}")
            lines.append(f"{endpoint.name:<20} {endpoint.model:<32} {'failed':<8} -")
        else:
            lines.append(f"{endpoint.name:<20} {endpoint.model:<32} {'ok':<8} {outcome:.3f}")
    if failed:
        raise EndpointUnreachable("; ".join(failed))
    return "\n".join(lines)


async def _ping_all(config: SeflConfig) -> list:
    async def ping(endpoint):
        client = EndpointClient(endpoint, config.retry.model_copy(update={"max_attempts": 2}))
        try:
            result = await client.chat([{"role": "user", "content": "ping"}], max_tokens=1)
            return result.record.latency_s
        except EndpointCallFailed as failure:
            return failure
        finally:
            await client.close()

    return await asyncio.gather(*(ping(endpoint) for endpoint in config.endpoints))
