"""Requests/s and p50/p99 latency of the Serve app with dynamic batching on and off, and Serve's overhead.

Two apps serve the same embedded model on one local Ray, one batching (max_batch_size 8) and one not; clients send
chat requests (greedy, fixed max_tokens) at concurrency 1, 8 and 32. Serve's overhead is the single-client p50
through Serve (batching off) minus the p50 of the same request run by the same engine in this process, with as
many torch threads as a replica gets (Ray sets OMP_NUM_THREADS to its num_cpus).
Usage: python bench/serve_throughput.py [--max-tokens 32] [--requests-per-client 2]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from pathlib import Path

import openai
import ray
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

from sefl_ray.serve.app import build_app  # noqa: E402

MODEL = "embedded:smollm2-135m"
REPLICA_CPUS = 1
PROMPTS = ["Give feedback on: 2 + 2 = 5.", "Explain why the sky is blue.", "Correct: 'Paris is in Spain.'",
           "What is 7 x 8? The student said 54.", "Summarize photosynthesis.", "Is 0.5 bigger than 0.25?"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def load(base_url: str, concurrency: int, requests_per_client: int, max_tokens: int):
    latencies, tokens = [], 0

    async with openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600) as client:
        async def one_client(index: int):
            nonlocal tokens
            for turn in range(requests_per_client):
                started = time.perf_counter()
                reply = await client.chat.completions.create(
                    model=MODEL, max_tokens=max_tokens, temperature=0,
                    messages=[{"role": "user", "content": PROMPTS[(index + turn) % len(PROMPTS)]}],
                )
                latencies.append(time.perf_counter() - started)
                tokens += reply.usage.completion_tokens

        started = time.perf_counter()
        await asyncio.gather(*(one_client(index) for index in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, tokens, wall


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def direct_p50(max_tokens: int, repeats: int, threads: int) -> float:
    import torch

    from sefl_ray.serve.engine import TransformersEngine

    torch.set_num_threads(threads)  # as in a replica: Ray sets OMP_NUM_THREADS to the replica's num_cpus
    from sefl_ray.serve.engine_api import GenerationRequest

    engine = TransformersEngine(MODEL)
    latencies = []
    for turn in range(repeats + 1):
        request = GenerationRequest(messages=[{"role": "user", "content": PROMPTS[turn % len(PROMPTS)]}],
                                    max_tokens=max_tokens, temperature=0)
        started = time.perf_counter()
        engine.generate([request])
        if turn:  # the first call warms up
            latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for name, batching in (("batched", True), ("unbatched", False)):
        serve.run(build_app({"model": MODEL, "batching": batching, "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
                             "num_cpus": REPLICA_CPUS}), name=name, route_prefix=f"/{name}")
    rows = []
    for concurrency in args.concurrency:
        for name in ("batched", "unbatched"):
            base_url = f"http://127.0.0.1:{port}/{name}/v1"
            asyncio.run(load(base_url, 1, 1, args.max_tokens))  # warm-up
            latencies, tokens, wall = asyncio.run(load(base_url, concurrency, args.requests_per_client,
                                                       args.max_tokens))
            rows.append({"clients": concurrency, "batching": name == "batched", "requests": len(latencies),
                         "requests_per_s": len(latencies) / wall, "tokens_per_s": tokens / wall,
                         "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99)})
    serve.shutdown()
    ray.shutdown()

    by_key = {(r["clients"], r["batching"]): r for r in rows}
    for row in rows:
        if row["batching"]:
            row["speedup_from_batching"] = row["requests_per_s"] / by_key[(row["clients"], False)]["requests_per_s"]
    direct = direct_p50(args.max_tokens, repeats=5, threads=REPLICA_CPUS)
    overhead_ms = (by_key[(1, False)]["p50_s"] - direct) * 1000 if (1, False) in by_key else None

    print_table(rows, ["clients", "batching", "requests", "requests_per_s", "tokens_per_s", "p50_s", "p99_s",
                       "speedup_from_batching"])
    print(f"in-process engine p50 (1 request, {args.max_tokens} tokens): {direct:.3f} s; "
          f"Serve overhead at p50: {overhead_ms:.1f} ms" if overhead_ms is not None else "")
    path = write_results("serve_throughput", rows, max_tokens=args.max_tokens, direct_p50_s=direct,
                         serve_overhead_p50_ms=overhead_ms,
                         goals={"batching_speedup_at_8plus": ">= 3x", "serve_overhead_p50_ms": "<= 10"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
