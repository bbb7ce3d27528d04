"""Requests/s and p50/p99 latency of the Serve app with dynamic batching on and off, and Serve's overhead.

Two apps serve the same embedded model on one local Ray, one batching (max_batch_size 32) and one not; clients
send chat requests (greedy, fixed max_tokens) at concurrency 1, 8 and 32. A soak then runs 64 clients for 30 s
against the batching app, one request in ten a bad one, and counts 5xx answers (there must be none).

Serve's overhead is what a request pays for going through Serve rather than calling the engine in-process.
Sequential one-token chat requests go over plain HTTP (one kept-alive connection) through the unbatched app
(HTTP, proxy, routing, the OpenAI layer, one prefill); each is followed at once by the same request on the same
engine loaded in this process, with as many torch threads as a replica gets (Ray sets OMP_NUM_THREADS to its
num_cpus). `overhead_p50_ms` is the p50 of the per-request differences; `p50_difference_ms`, the difference of
the two p50s, is printed beside it. Pairs, not two phases minutes apart: this machine's speed drifts by several %
between minutes, as much as the overhead. One-token requests keep decoding time, which has nothing to do with
Serve, from swamping the difference; the same comparison at --max-tokens is printed beside it.
Usage: python bench/serve_throughput.py [--max-tokens 32] [--requests-per-client 2] [--overhead-requests 60]
"""

from __future__ import annotations

import argparse
import asyncio
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
from sefl_ray.testing.ports import free_port  # noqa: E402

MODEL = "embedded:smollm2-135m"
REPLICA_CPUS = 1
PROMPTS = ["Give feedback on: 2 + 2 = 5.", "Explain why the sky is blue.", "Correct: 'Paris is in Spain.'",
           "What is 7 x 8? The student said 54.", "Summarize photosynthesis.", "Is 0.5 bigger than 0.25?"]


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


def served_latency(connection, path: str, messages: list[dict[str, str]], max_tokens: int) -> float:
    """One chat request over plain HTTP on a kept-alive connection, as any OpenAI client sends them: the overhead
    comparison should charge Serve, not a client's own per-request work or a TCP handshake per request, which an
    in-process call does not pay either."""
    import json

    body = json.dumps({"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "messages": messages})
    started = time.perf_counter()
    connection.request("POST", f"{path}/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"Serve answered {response.status}")
    return time.perf_counter() - started


def paired_overhead(engine, base_url: str, requests: int, max_tokens: int) -> dict:
    """Each request twice in a row: through Serve, then on the in-process engine. Pairs share the machine's
    conditions of the moment (its speed drifts by several % from minute to minute, as much as the overhead itself),
    so the per-request difference is Serve's cost and not the drift."""
    import http.client
    import urllib.parse

    from sefl_ray.serve.engine_api import GenerationRequest

    url = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    served, direct = [], []
    for turn in range(requests + 2):  # the first two pairs warm up
        messages = [{"role": "user", "content": PROMPTS[turn % len(PROMPTS)]}]
        served_s = served_latency(connection, url.path, messages, max_tokens)
        started = time.perf_counter()
        engine.generate([GenerationRequest(messages=messages, max_tokens=max_tokens, temperature=0)])
        if turn >= 2:
            served.append(served_s)
            direct.append(time.perf_counter() - started)
    connection.close()
    return {"max_tokens": max_tokens, "requests": requests, "serve_p50_ms": statistics.median(served) * 1e3,
            "in_process_p50_ms": statistics.median(direct) * 1e3,
            "p50_difference_ms": (statistics.median(served) - statistics.median(direct)) * 1e3,
            "overhead_p50_ms": statistics.median(a - b for a, b in zip(served, direct)) * 1e3}


async def soak(base_url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    """`clients` loops for `seconds`, one request in ten a bad one (unknown model): every answer must be a 200 or
    a 4xx, never a 5xx."""
    from sefl_ray.testing.load import post_in_loops

    def body_for(index: int, turn: int) -> dict:
        bad = (index + turn) % 10 == 0
        return {"model": "no-such-model" if bad else MODEL, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPTS[(index + turn) % len(PROMPTS)]}]}

    started = time.perf_counter()
    statuses, latencies = await post_in_loops(f"{base_url}/chat/completions", clients, seconds, body_for)
    wall = time.perf_counter() - started
    return {"clients": clients, "seconds": wall, "requests": len(statuses), "ok_200": statuses.count(200),
            "client_4xx": sum(400 <= s < 500 for s in statuses), "server_5xx": sum(s >= 500 for s in statuses),
            "requests_per_s": len(statuses) / wall, "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99)}


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--overhead-requests", type=int, default=60)
    parser.add_argument("--soak-clients", type=int, default=64)
    parser.add_argument("--soak-s", type=float, default=30.0)
    parser.add_argument("--soak-max-tokens", type=int, default=8)
    args = parser.parse_args()

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for name, batching in (("batched", True), ("unbatched", False)):
        serve.run(build_app({"model": MODEL, "batching": batching, "max_batch_size": args.max_batch_size,
                             "max_ongoing_requests": max(64, args.max_batch_size), "batch_wait_timeout_s": 0.05,
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
    soak_row = asyncio.run(soak(f"http://127.0.0.1:{port}/batched/v1", args.soak_clients, args.soak_s,
                                args.soak_max_tokens))
    by_key = {(r["clients"], r["batching"]): r for r in rows}
    for row in rows:
        if row["batching"]:
            row["speedup_from_batching"] = row["requests_per_s"] / by_key[(row["clients"], False)]["requests_per_s"]

    import torch

    from sefl_ray.serve.engine import TransformersEngine

    # The in-process engine runs here, beside the (idle) replica, with as many torch threads as the replica gets:
    # Ray sets OMP_NUM_THREADS to its num_cpus.
    torch.set_num_threads(REPLICA_CPUS)
    engine = TransformersEngine(MODEL)
    unbatched_url = f"http://127.0.0.1:{port}/unbatched/v1"
    overhead = [paired_overhead(engine, unbatched_url, args.overhead_requests, 1),
                paired_overhead(engine, unbatched_url, 5, args.max_tokens)]
    serve.shutdown()
    ray.shutdown()

    print_table(rows, ["clients", "batching", "requests", "requests_per_s", "tokens_per_s", "p50_s", "p99_s",
                       "speedup_from_batching"])
    print_table(overhead, ["max_tokens", "requests", "serve_p50_ms", "in_process_p50_ms", "p50_difference_ms",
                           "overhead_p50_ms"])
    print(f"soak: {args.soak_clients} clients for {args.soak_s:.0f} s on the batched app "
          f"(max_tokens {args.soak_max_tokens}, one request in ten for an unknown model)")
    print_table([soak_row], ["clients", "seconds", "requests", "ok_200", "client_4xx", "server_5xx",
                             "requests_per_s", "p50_s", "p99_s"])
    path = write_results("serve_throughput", rows, max_tokens=args.max_tokens, max_batch_size=args.max_batch_size,
                         overhead=overhead, soak=soak_row, serve_overhead_p50_ms=overhead[0]["overhead_p50_ms"],
                         goals={"batching_speedup_at_8plus": ">= 3x", "serve_overhead_p50_ms": "<= 10"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
