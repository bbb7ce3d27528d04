"""Synthesis conversations/s vs. concurrency on Ray Data, against the ideal and against SEFL's sequential loop.

The loopback server runs in its own process with a fixed latency and answers every call with the smallest valid
instance of its JSON schema, so each conversation is exactly 3 calls and the ideal rate at concurrency C is
C / (3 x latency). For each C, `run_synth` runs on a fresh run_dir. `conv_per_s` is rows / the Ray Data part's
wall time as `run_synth` itself measures it (summary.json `elapsed_s`: actor start-up, every conversation and the
parquet write, nothing subtracted); `steady_conv_per_s` counts only the rows after the first C, from the time the
C-th finished to the last, i.e. without actor start-up and the first wave. `cpu_ms_per_conv` is the CPU time of
this benchmark's own process tree (driver, Ray, actors, loopback server) per conversation, sampled while the level
runs, and `actor_cpu_ms_per_conv` the part spent in the endpoint-batch actors (`EndpointWorker`): on a small
machine, rows/s can never beat cores / that. `cores_used` is that tree's CPU time over the wall time: near the
core count, the level is CPU-bound (other users of the machine lower the ceiling: the load average is printed and
saved).

The main sweep's latency, 2 s a call, is that of a real model writing one of these turns (a few hundred tokens at
100-200 tokens/s from a hosted API or a vLLM server); each level runs whole waves of C for about two minutes
(start-up, about 3 s, is paid once per run, and real runs last hours). A stress sweep at 0.1 s a call shows where
this machine's CPU becomes the limit: every call costs the `openai` client, the agents and the server a few ms of
CPU, so 2 cores cannot keep hundreds of 0.1 s calls in flight at any C.

SEFL's loop (one conversation after another in a plain asyncio loop calling `run_conversation`, no Ray) runs
against the same server. Driver memory: the peak RSS (VmHWM) of a fresh driver process per row count, each its own
subprocess of this script. Usage: python bench/synth_throughput.py [--latency-s 2] [--concurrency 1 8 32 128 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

from sefl_ray.config import SeflConfig, load_config  # noqa: E402
from sefl_ray.testing.loopback import LoopbackConfig, start_loopback_process  # noqa: E402

CALLS_PER_CONVERSATION = 3
PASSAGES = 48  # in the built-in corpus: samples_per_source is sized from this so any row count can be planned
COLUMNS = ["latency_s", "concurrency", "num_actors", "batch_size", "calls_per_actor", "rows", "elapsed_s",
           "around_s", "first_row_s", "conv_per_s", "steady_conv_per_s", "ideal_conv_per_s", "pct_of_ideal",
           "steady_pct_of_ideal", "cpu_ms_per_conv", "actor_cpu_ms_per_conv", "cores_used"]


def synth_config(base_url: str, run_dir: str, rows: int, concurrency: int, num_actors: int, batch_size: int,
                 num_cpus: int, endpoint_max_concurrency: int | None = None) -> SeflConfig:
    # The endpoint's max_concurrency caps calls in flight per actor process (default 64): unless told otherwise it
    # is raised to C here, so that it is not what limits the benchmark.
    max_concurrency = endpoint_max_concurrency or max(64, concurrency)
    endpoint = f"{{name: loop, model: loop-model, base_url: '{base_url}', max_concurrency: {max_concurrency}}}"
    return load_config(None, [
        f"run_dir={run_dir}", f"ray.num_cpus={num_cpus}", f"endpoints=[{endpoint}]",
        "synth.teacher_endpoint=loop", "synth.student_endpoint=loop",
        f"synth.samples_per_source={math.ceil(rows / PASSAGES)}", f"synth.num_conversations={rows}",
        f"synth.concurrency={concurrency}", f"synth.num_actors={num_actors}", f"synth.batch_size={batch_size}",
    ])


def knobs_for(concurrency: int, max_actors: int) -> tuple[int, int]:
    """(num_actors, batch_size): one actor per core (the work is client CPU once C is large); about four batches
    in flight per actor, but at least 2 rows a batch (each batch is also a write task and a parquet file), so that
    C = num_actors x batch_size x calls_per_actor holds exactly for the powers of two swept here."""
    num_actors = min(max_actors, concurrency)
    per_actor = max(1, concurrency // num_actors)
    return num_actors, min(per_actor, max(2, per_actor // 4))


def rows_for(concurrency: int, latency_s: float, target_s: float, max_rows: int) -> int:
    """Whole waves of C conversations (at fixed latency they finish together, so a last partial wave would take a
    full wave's time: rows / (C / wave time) would undercount the ideal), enough for about `target_s` at the ideal
    rate and at least 3 waves, capped at `max_rows` rounded down to whole waves."""
    wave_s = CALLS_PER_CONVERSATION * latency_s
    waves = max(3, round(target_s / wave_s)) if wave_s > 0 else 3
    return concurrency * max(3, min(waves, max_rows // concurrency))


class TreeCpu:
    """CPU seconds of this process and all its descendants (Ray's workers are), sampled while a level runs, so
    that processes which exit mid-level (the actors) still count. Other users of the machine do not."""

    def __init__(self, interval_s: float = 0.5):
        import psutil

        self._psutil, self._interval_s = psutil, interval_s
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._born_before: set[int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeCpu:
        self._sample()
        self._born_before = set(self._first)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def total_s(self, name_contains: str = "") -> float:
        return sum(self._last[pid] - self._first[pid] for pid in self._last if name_contains in self._names[pid])

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        me = self._psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
                name = " ".join(process.cmdline()) or process.name()
            except self._psutil.Error:
                continue
            used = times.user + times.system
            # A process born while the level runs (an actor) counts from zero, its start-up included.
            self._first.setdefault(process.pid, used if self._born_before is None else 0.0)
            self._last[process.pid] = used
            self._names[process.pid] = name


def run_level(base_url: str, concurrency: int, rows: int, num_actors: int, batch_size: int, num_cpus: int,
              endpoint_max_concurrency: int | None = None) -> dict:
    from sefl_ray.data.records import read_records
    from sefl_ray.synth.run import run_synth

    with tempfile.TemporaryDirectory(prefix="synth-bench-") as run_dir:
        config = synth_config(base_url, run_dir, rows, concurrency, num_actors, batch_size, num_cpus,
                              endpoint_max_concurrency)
        with TreeCpu() as cpu:
            started_unix, started = time.time(), time.perf_counter()
            records_dir = run_synth(config)
            around_s = time.perf_counter() - started
        summary = json.loads((records_dir.parent / "summary.json").read_text())
        finished = sorted(read_records(records_dir)["finished_at"].to_pylist())
    done = summary["ok"] + summary["failed"]
    # Steady state: rows after the first C finished, over the time from the C-th to the last one. That leaves
    # start-up (actors, the first wave) out and stays exact when rows finish in waves of C, as at fixed latency.
    first_wave = finished[min(concurrency, len(finished)) - 1]
    steady = (len(finished) - concurrency) / (finished[-1] - first_wave) if finished[-1] > first_wave else None
    return {
        "rows": rows, "ok": summary["ok"], "elapsed_s": summary["elapsed_s"], "around_s": around_s,
        "conv_per_s": done / summary["elapsed_s"], "conv_per_s_around": done / around_s,
        "steady_conv_per_s": steady, "first_row_s": finished[0] - started_unix,
        "cpu_ms_per_conv": 1000 * cpu.total_s() / done, "cores_used": cpu.total_s() / around_s,
        "actor_cpu_ms_per_conv": 1000 * cpu.total_s("EndpointWorker") / done,
        "server_cpu_ms_per_conv": 1000 * cpu.total_s("sefl_ray.testing.loopback") / done,
    }


def sweep(latency_s: float, concurrencies: list[int], args, sequential_rows: int,
          target_s: float) -> tuple[list[dict], dict]:
    """SEFL's loop, then run_synth at each concurrency, against one loopback server at `latency_s`."""
    server, base_url = start_loopback_process(LoopbackConfig(latency_s=latency_s), replies="schema")
    rows_out = []
    try:
        sequential = asyncio.run(sequential_loop(base_url, sequential_rows))
        sequential["latency_s"] = latency_s
        print(f"latency {latency_s} s, sequential loop: {sequential['conv_per_s']:.2f} conv/s", flush=True)
        for concurrency in concurrencies:
            num_actors, batch_size = knobs_for(concurrency, args.max_actors)
            rows = rows_for(concurrency, latency_s, target_s, args.max_rows)
            ideal = concurrency / (CALLS_PER_CONVERSATION * latency_s)
            result = run_level(base_url, concurrency, rows, num_actors, batch_size, args.num_cpus)
            rows_out.append({
                "latency_s": latency_s, "concurrency": concurrency, "num_actors": num_actors,
                "batch_size": batch_size, "calls_per_actor": math.ceil(concurrency / (num_actors * batch_size)),
                **result, "ideal_conv_per_s": ideal, "pct_of_ideal": 100.0 * result["conv_per_s"] / ideal,
                "steady_pct_of_ideal": 100.0 * result["steady_conv_per_s"] / ideal
                if result["steady_conv_per_s"] else None,
            })
            print(f"latency {latency_s} s, C={concurrency}: {result['conv_per_s']:.1f} conv/s "
                  f"({rows_out[-1]['pct_of_ideal']:.0f} % of ideal {ideal:.1f})", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return rows_out, sequential


async def sequential_loop(base_url: str, rows: int) -> dict:
    """SEFL's way: one conversation at a time, awaited in turn, in one process."""
    from sefl_ray.llm.client import EndpointClient
    from sefl_ray.synth.conversation import ConversationPlan, ConversationSettings, run_conversation
    from sefl_ray.synth.run import plan_conversations, synth_fingerprint
    from sefl_ray.synth.sources import load_sources

    config = synth_config(base_url, tempfile.gettempdir(), rows + 1, 1, 1, 1, 1)
    fingerprint = synth_fingerprint(config)
    texts = {source["source_id"]: source["source_text"] for source in load_sources(config.synth.sources)}
    plans = [ConversationPlan(source_text=texts[plan["source_id"]], **plan)
             for plan in plan_conversations(config, fingerprint)]
    client = EndpointClient(config.endpoint("loop"), config.retry)
    settings = ConversationSettings(config_fingerprint=fingerprint, max_new_tokens=config.synth.max_new_tokens)
    try:
        await run_conversation(plans[0], client, client, settings)  # warm up imports and the connection
        started, cpu_started = time.perf_counter(), time.thread_time()  # not Ray's driver threads
        records = [await run_conversation(plan, client, client, settings) for plan in plans[1:]]
        elapsed, cpu_s = time.perf_counter() - started, time.thread_time() - cpu_started
    finally:
        await client.close()
    return {"rows": rows, "ok": sum(r["status"] == "ok" for r in records), "elapsed_s": elapsed,
            "conv_per_s": rows / elapsed, "client_cpu_ms_per_conv": 1000 * cpu_s / rows}


def memory_child(base_url: str, rows: int, concurrency: int, max_actors: int, num_cpus: int) -> None:
    """In a fresh process: start Ray, run synth once, print peak RSS of this (driver) process as JSON."""
    import psutil
    import ray

    from sefl_ray.synth.run import run_synth

    _quiet()
    ray.init(num_cpus=num_cpus, object_store_memory=512 * 1024 * 1024, include_dashboard=False,
             logging_level=logging.WARNING)
    _no_progress_bars()
    after_init_mb = psutil.Process().memory_info().rss / 2**20
    num_actors, batch_size = knobs_for(concurrency, max_actors)
    with tempfile.TemporaryDirectory(prefix="synth-mem-") as run_dir:
        started = time.perf_counter()
        run_synth(synth_config(base_url, run_dir, rows, concurrency, num_actors, batch_size, num_cpus))
        elapsed = time.perf_counter() - started
    peak_mb = _peak_rss_mb()
    print("RESULT " + json.dumps({
        "rows": rows, "concurrency": concurrency, "num_actors": num_actors, "batch_size": batch_size,
        "driver_rss_after_init_mb": after_init_mb, "driver_peak_rss_mb": peak_mb,
        "growth_mb": peak_mb - after_init_mb, "elapsed_s": elapsed,
    }), flush=True)
    ray.shutdown()


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux's VmHWM, not getrusage's ru_maxrss: the latter carries over the parent's
    RSS at fork (exec saves the old address space's high-water mark), so a child of a big benchmark process would
    report the parent's size."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(base_url: str, rows: int, args) -> dict:
    argv = [sys.executable, __file__, "--memory-child", str(rows), "--base-url", base_url,
            "--memory-concurrency", str(args.memory_concurrency), "--max-actors", str(args.max_actors),
            "--num-cpus", str(args.num_cpus)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"memory run of {rows} rows failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


def _quiet() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.basicConfig(level=logging.WARNING)


def _no_progress_bars() -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _sequential_rows(latency_s: float, requested: int) -> int:
    """At least 3 and about 10 s of SEFL's loop; `requested` at the main latency."""
    return max(3, min(requested, round(10 / (CALLS_PER_CONVERSATION * latency_s))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128, 256])
    parser.add_argument("--target-s", type=float, default=120.0, help="rows per level: ideal rate x this, capped")
    parser.add_argument("--max-rows", type=int, default=6000, help="cap on rows per concurrency level")
    parser.add_argument("--max-actors", type=int, default=2, help="endpoint-batch actors (one per core)")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--sequential-rows", type=int, default=20)
    parser.add_argument("--control-latency-s", type=float, default=0.1, help="0: no control (stress) sweep")
    parser.add_argument("--control-target-s", type=float, default=8.0)
    parser.add_argument("--control-concurrency", type=int, nargs="*", default=[32, 128, 256])
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--memory-concurrency", type=int, default=256)
    parser.add_argument("--memory-latency-s", type=float, default=0.0)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child is not None:
        memory_child(args.base_url, args.memory_child, args.memory_concurrency, args.max_actors, args.num_cpus)
        return

    import ray

    _quiet()
    load_before = os.getloadavg()
    ray.init(num_cpus=args.num_cpus, object_store_memory=512 * 1024 * 1024, include_dashboard=False,
             logging_level=logging.WARNING)
    _no_progress_bars()
    rows_out, sequential = sweep(args.latency_s, args.concurrency, args,
                                 _sequential_rows(args.latency_s, args.sequential_rows), args.target_s)
    control_rows, control_sequential = [], None
    if args.control_latency_s and args.control_concurrency:
        control_rows, control_sequential = sweep(args.control_latency_s, args.control_concurrency, args,
                                                 _sequential_rows(args.control_latency_s, args.sequential_rows),
                                                 args.control_target_s)
    ray.shutdown()

    memory = []
    if args.memory_rows:
        server, base_url = start_loopback_process(LoopbackConfig(latency_s=args.memory_latency_s), replies="schema")
        try:
            memory = [measure_memory(base_url, rows, args) for rows in args.memory_rows]
        finally:
            server.terminate()
            server.wait(timeout=10)
    load_after = os.getloadavg()

    def speedup_at_128(rows: list[dict], seq: dict, column: str) -> float | None:
        at_128 = next((r for r in rows if r["concurrency"] == 128), None)
        return at_128[column] / seq["conv_per_s"] if at_128 and at_128[column] else None

    print(f"\nsynthesis on Ray Data vs. the loopback server, {CALLS_PER_CONVERSATION} calls per conversation; "
          "conv_per_s = rows / Ray Data wall time (summary.json elapsed_s, nothing subtracted)")
    print_table(rows_out + control_rows, COLUMNS)
    speedups = {}
    for seq, rows in ((sequential, rows_out), (control_sequential, control_rows)):
        if seq is None:
            continue
        speedup, steady_speedup = speedup_at_128(rows, seq, "conv_per_s"), speedup_at_128(rows, seq,
                                                                                           "steady_conv_per_s")
        speedups[str(seq["latency_s"])] = {"wall": speedup, "steady": steady_speedup}
        print(f"\nlatency {seq['latency_s']} s, SEFL's sequential loop: {seq['rows']} conversations in "
              f"{seq['elapsed_s']:.2f} s = {seq['conv_per_s']:.3f} conv/s "
              f"(ideal {1 / (CALLS_PER_CONVERSATION * seq['latency_s']):.3f}; client CPU "
              f"{seq['client_cpu_ms_per_conv']:.1f} ms/conversation)")
        if speedup:
            print(f"C=128 over it: {speedup:.1f}x on conv_per_s, {steady_speedup:.1f}x on steady_conv_per_s "
                  "(goal >= 100x)")
    if memory:
        print(f"\ndriver memory, C={args.memory_concurrency}, latency {args.memory_latency_s} s, a fresh driver "
              "process per row count:")
        print_table(memory, ["rows", "num_actors", "batch_size", "driver_rss_after_init_mb", "driver_peak_rss_mb",
                             "growth_mb", "elapsed_s"])
    print(f"\nload average (1, 5, 15 min) before {load_before}, after {load_after}; {os.cpu_count()} cores")
    path = write_results(
        "synth_throughput", rows_out + control_rows, latency_s=args.latency_s,
        control_latency_s=args.control_latency_s, calls_per_conversation=CALLS_PER_CONVERSATION,
        ray_num_cpus=args.num_cpus,
        rate_definition="rows / summary.json elapsed_s (the Ray Data part of run_synth, actor start-up included); "
                        "steady: (rows - C) / (last finished_at - C-th finished_at)",
        sequential_loop=[s for s in (sequential, control_sequential) if s],
        speedup_at_128_over_sequential=speedups, driver_memory=memory,
        memory_concurrency=args.memory_concurrency, memory_latency_s=args.memory_latency_s,
        load_average_before=load_before, load_average_after=load_after,
        goals={"pct_of_ideal_up_to_256": ">= 90", "speedup_at_128": ">= 100", "driver_memory": "flat as rows grow"},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
