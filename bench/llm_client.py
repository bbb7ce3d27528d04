"""Calls/s through sefl-ray's endpoint layer vs raw `openai` async calls, against the loopback server.

The loopback server runs in its own process with a fixed latency; each concurrency level runs raw and layer
back to back, several rounds alternating, and reports the median so machine noise hits both sides alike.
Usage: python bench/llm_client.py [--latency-s 0.05] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

from sefl_ray.config import RetryConfig  # noqa: E402
from sefl_ray.llm.client import EndpointClient  # noqa: E402
from sefl_ray.llm.endpoint import EndpointConfig  # noqa: E402
from sefl_ray.testing.loopback import LoopbackConfig, start_loopback_process  # noqa: E402

MESSAGES = [{"role": "user", "content": "Give one sentence of feedback on this essay."}]


async def drive(call, concurrency: int, total_calls: int) -> float:
    """Run `total_calls` calls with `concurrency` in flight; returns calls per second."""
    remaining = total_calls

    async def worker():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total_calls / (time.perf_counter() - started)


async def raw_openai(base_url: str, concurrency: int, total_calls: int) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=60)

    async def call():
        await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16)

    try:
        return await drive(call, concurrency, total_calls)
    finally:
        await client.close()


async def through_layer(base_url: str, concurrency: int, total_calls: int) -> float:
    endpoint = EndpointConfig(name="loop", model="m", base_url=base_url, max_concurrency=concurrency, timeout_s=60)
    client = EndpointClient(endpoint, RetryConfig())

    async def call():
        await client.chat(MESSAGES, max_tokens=16)

    try:
        return await drive(call, concurrency, total_calls)
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 256])
    args = parser.parse_args()

    server, base_url = start_loopback_process(LoopbackConfig(latency_s=args.latency_s))
    rows = []
    try:
        for concurrency in args.concurrency:
            total_calls = max(60, concurrency * 8)
            raw_rates, layer_rates = [], []
            asyncio.run(raw_openai(base_url, concurrency, concurrency))  # warm up connections and imports
            for round_index in range(args.rounds):
                sides = [(raw_rates, raw_openai), (layer_rates, through_layer)]
                for rates, run in sides if round_index % 2 == 0 else reversed(sides):  # alternate who goes first
                    rates.append(asyncio.run(run(base_url, concurrency, total_calls)))
            raw, layer = statistics.median(raw_rates), statistics.median(layer_rates)
            rows.append({
                "concurrency": concurrency,
                "calls": total_calls,
                "ideal_calls_per_s": concurrency / args.latency_s,
                "raw_openai_calls_per_s": raw,
                "layer_calls_per_s": layer,
                "overhead_pct": 100.0 * (1 - layer / raw),
            })
    finally:
        server.terminate()
        server.wait(timeout=10)

    columns = ["concurrency", "calls", "ideal_calls_per_s", "raw_openai_calls_per_s", "layer_calls_per_s",
               "overhead_pct"]
    print_table(rows, columns)
    path = write_results("llm_client", rows, latency_s=args.latency_s, rounds=args.rounds, goal="overhead <= 5 %")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
