"""Requests/s and p50/p99 latency of the Serve app with dynamic batching on and off, and Serve's overhead.

Two apps serve the same embedded model on one local Ray, one batching (max_batch_size 32) and one not; clients
send chat requests (greedy, fixed max_tokens) at concurrency 1, 8 and 32. A soak then runs 64 clients for 60 s
against the batching app (which requires a key), one request in ten a bad one of six kinds in turn: a json_schema
the grammar compiler rejects, a seed over 2^64, a prompt over the model's context, a body that is not JSON, a body
over max_request_bytes, a wrong key. It counts answers by status class and by kind; there must be no 5xx, and every
good request must be a 200 (a bad request that reached a batch would fail the whole batch). `--soak-only` runs just
the soak and updates the `soak` entries of bench/results/serve_throughput.json, keeping its other results.

Serve's overhead is what a request pays for going through Serve rather than calling the engine in-process.
Sequential one-token chat requests go over plain HTTP (one kept-alive connection) through the unbatched app
(HTTP, proxy, routing, the OpenAI layer, one prefill); each is followed at once by the same request on the same
engine loaded in this process, with as many torch threads as a replica gets (Ray sets OMP_NUM_THREADS to its
num_cpus). `overhead_p50_ms` is the p50 of the per-request differences; `p50_difference_ms`, the difference of
the two p50s, is printed beside it. Pairs, not two phases minutes apart: this machine's speed drifts by several %
between minutes, as much as the overhead. One-token requests keep decoding time, which has nothing to do with
Serve, from swamping the difference; the same comparison at --max-tokens is printed beside it.
Usage: python bench/serve_throughput.py [--max-tokens 32] [--requests-per-client 2] [--overhead-requests 60]
       python bench/serve_throughput.py --soak-only [--soak-clients 64] [--soak-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import openai
import ray
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, print_table, write_results  # noqa: E402

from sefl_ray.config import ServeAppConfig  # noqa: E402
from sefl_ray.serve.app import build_app  # noqa: E402
from sefl_ray.testing.ports import free_port  # noqa: E402

MODEL = "embedded:smollm2-135m"
REPLICA_CPUS = 1
PROMPTS = ["Give feedback on: 2 + 2 = 5.", "Explain why the sky is blue.", "Correct: 'Paris is in Spain.'",
           "What is 7 x 8? The student said 54.", "Summarize photosynthesis.", "Is 0.5 bigger than 0.25?"]
KEY_ENV = "SEFL_RAY_BENCH_SERVE_KEY"  # the batched app requires it: the soak's wrong-key requests get a 401
KEY = "sk-bench-serve"
CONTEXT_TOKENS = 8192  # SmolLM2-135M's; "word " is about a token
BAD_KINDS = ("invalid_json_schema", "huge_seed", "over_context_prompt", "malformed_json", "oversized_body",
             "wrong_auth")
EXPECTED_STATUS = {"good": 200, "invalid_json_schema": 400, "huge_seed": 400, "over_context_prompt": 400,
                   "malformed_json": 400, "oversized_body": 413, "wrong_auth": 401}


async def load(base_url: str, concurrency: int, requests_per_client: int, max_tokens: int):
    latencies, tokens = [], 0

    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600) as client:
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


def soak_kind(client: int, turn: int) -> str:
    """One request in ten is bad, the bad kinds taking turns."""
    if (client + turn) % 10:
        return "good"
    return BAD_KINDS[(client + turn) // 10 % len(BAD_KINDS)]


def soak_bodies(max_tokens: int, max_request_bytes: int) -> dict[str, list[tuple[bytes, dict[str, str]]]]:
    """(body, headers) choices for each kind, serialized once: the oversized one is over a MiB."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}

    def chat(prompt: str, **extra) -> bytes:
        return json.dumps({"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}], **extra}).encode()

    rejected_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    return {
        "good": [(chat(prompt), headers) for prompt in PROMPTS],
        "invalid_json_schema": [(chat(PROMPTS[0], response_format=rejected_schema), headers)],
        "huge_seed": [(chat(PROMPTS[1], seed=2**70), headers)],
        "over_context_prompt": [(chat("word " * (CONTEXT_TOKENS + 500)), headers)],
        "malformed_json": [(b'{"model": "' + MODEL.encode() + b'", "messages": [', headers)],
        "oversized_body": [(chat("x" * max_request_bytes), headers)],
        "wrong_auth": [(chat(PROMPTS[2]), {**headers, "Authorization": "Bearer not-the-key"})],
    }


async def soak(base_url: str, clients: int, seconds: float, max_tokens: int) -> tuple[dict, list[dict]]:
    """`clients` closed loops for `seconds` (each waits for its answer; every request has a 600 s timeout), one
    request in ten a bad one: (summary by status class, one row per kind)."""
    import aiohttp

    bodies = soak_bodies(max_tokens, ServeAppConfig().max_request_bytes)
    outcomes: list[tuple[str, int | None, float]] = []  # kind, status (None: no HTTP answer), seconds
    url = f"{base_url}/chat/completions"
    deadline = time.monotonic() + seconds

    async def client_loop(index: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            turn = 0
            while time.monotonic() < deadline:
                kind = soak_kind(index, turn)
                choices = bodies[kind]
                data, headers = choices[(index + turn) % len(choices)]
                started = time.perf_counter()
                try:
                    async with http.post(url, data=data, headers=headers) as response:
                        await response.read()
                        status: int | None = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = None
                outcomes.append((kind, status, time.perf_counter() - started))
                turn += 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(index) for index in range(clients)))
    wall = time.perf_counter() - started
    statuses = [status for _, status, _ in outcomes]
    good_latencies = [latency for kind, status, latency in outcomes if kind == "good" and status == 200]
    summary = {
        "clients": clients, "seconds": wall, "requests": len(outcomes),
        "bad_share": sum(kind != "good" for kind, _, _ in outcomes) / max(1, len(outcomes)),
        "status_2xx": sum(s is not None and 200 <= s < 300 for s in statuses),
        "status_4xx": sum(s is not None and 400 <= s < 500 for s in statuses),
        "status_5xx": sum(s is not None and s >= 500 for s in statuses),
        "no_answer": statuses.count(None),
        "unexpected": sum(status != EXPECTED_STATUS[kind] for kind, status, _ in outcomes),
        "requests_per_s": len(outcomes) / wall,
        "good_p50_s": percentile(good_latencies, 50) if good_latencies else None,
        "good_p99_s": percentile(good_latencies, 99) if good_latencies else None,
    }
    kinds = []
    for kind in ("good", *BAD_KINDS):
        seen = collections.Counter("none" if status is None else str(status)
                                   for outcome_kind, status, _ in outcomes if outcome_kind == kind)
        kinds.append({"kind": kind, "requests": sum(seen.values()), "expected": EXPECTED_STATUS[kind],
                      "as_expected": seen.get(str(EXPECTED_STATUS[kind]), 0),
                      "statuses": " ".join(f"{status}:{count}" for status, count in sorted(seen.items()))})
    return summary, kinds


def print_soak(summary: dict, kinds: list[dict], max_tokens: int) -> None:
    print(f"soak: {summary['clients']} clients for {summary['seconds']:.0f} s on the batched app (max_tokens "
          f"{max_tokens}; one request in ten bad, six kinds in turn)")
    print_table([summary], ["clients", "seconds", "requests", "bad_share", "status_2xx", "status_4xx", "status_5xx",
                            "no_answer", "unexpected", "requests_per_s", "good_p50_s", "good_p99_s"])
    print_table(kinds, ["kind", "requests", "expected", "as_expected", "statuses"])


def update_results(name: str, **entries) -> Path:
    """Replace `entries` in an existing results file, keeping everything else it holds."""
    path = RESULTS_DIR / f"{name}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"benchmark": name}
    payload.update(entries)
    path.write_text(json.dumps(payload, indent=2))
    return path


def start_apps(port: int, max_batch_size: int, names: tuple[str, ...]) -> None:
    """The batched app (with a key) and the unbatched one (without), on one Serve."""
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for name in names:
        batching = name == "batched"
        serve.run(build_app({"model": MODEL, "batching": batching, "max_batch_size": max_batch_size,
                             "max_ongoing_requests": max(64, max_batch_size), "batch_wait_timeout_s": 0.05,
                             "num_cpus": REPLICA_CPUS, "api_key_env": KEY_ENV if batching else None}),
                  name=name, route_prefix=f"/{name}")


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
    parser.add_argument("--soak-s", type=float, default=60.0)
    parser.add_argument("--soak-max-tokens", type=int, default=8)
    parser.add_argument("--soak-only", action="store_true", help="run only the soak; update its results entries")
    args = parser.parse_args()

    os.environ[KEY_ENV] = KEY  # before Ray starts, so that the replicas see it too
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    port = free_port()
    start_apps(port, args.max_batch_size, ("batched",) if args.soak_only else ("batched", "unbatched"))
    batched_url = f"http://127.0.0.1:{port}/batched/v1"
    if args.soak_only:
        asyncio.run(load(batched_url, 1, 1, args.soak_max_tokens))  # warm-up
        summary, kinds = asyncio.run(soak(batched_url, args.soak_clients, args.soak_s, args.soak_max_tokens))
        serve.shutdown()
        ray.shutdown()
        print_soak(summary, kinds, args.soak_max_tokens)
        summary["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        summary["max_tokens"] = args.soak_max_tokens
        print(f"wrote {update_results('serve_throughput', soak=summary, soak_kinds=kinds)}")
        return

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
    summary, kinds = asyncio.run(soak(batched_url, args.soak_clients, args.soak_s, args.soak_max_tokens))
    summary["max_tokens"] = args.soak_max_tokens
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
    print_soak(summary, kinds, args.soak_max_tokens)
    path = write_results("serve_throughput", rows, max_tokens=args.max_tokens, max_batch_size=args.max_batch_size,
                         overhead=overhead, soak=summary, soak_kinds=kinds,
                         serve_overhead_p50_ms=overhead[0]["overhead_p50_ms"],
                         goals={"batching_speedup_at_8plus": ">= 3x", "serve_overhead_p50_ms": "<= 10",
                                "soak_status_5xx": "0", "soak_unexpected": "0"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
