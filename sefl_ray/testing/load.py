"""Closed-loop HTTP load for tests and benchmarks: N clients post for a while, each waiting for its answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


async def post_in_loops(
    url: str, clients: int, seconds: float, body_for: Callable[[int, int], dict[str, Any]]
) -> tuple[list[int], list[float]]:
    """(status of every answer, its latency in s): `clients` loops post `body_for(client, turn)` to `url` until
    `seconds` have passed."""
    import aiohttp

    statuses: list[int] = []
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client_loop(index: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            turn = 0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with http.post(url, json=body_for(index, turn)) as response:
                    await response.read()
                    statuses.append(response.status)
                latencies.append(time.perf_counter() - started)
                turn += 1

    await asyncio.gather(*(client_loop(index) for index in range(clients)))
    return statuses, latencies
