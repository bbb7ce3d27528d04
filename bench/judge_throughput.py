"""Judgments/s of `run_judge` at concurrency 1, 16 and 64 against a loopback judge with fixed latency, beside the
ideal (C / latency) and SEFL's loop (one call at a time, then a 0.5 s sleep, as its judging script does).

The loopback server runs in its own process and answers each pairwise prompt with a valid verdict (the smallest
instance of the request's JSON schema), so every call is one judgment. Each level judges enough items to keep C
calls in flight for about `--seconds` seconds; `judgments_per_s` is calls / the wall time of `call_judges`
(actor start-up included, nothing subtracted); `steady_per_s` counts the judgments after the first C, from the
time the C-th finished to the last (each row's `finished_at`), i.e. without actor start-up and the first wave.
Usage: python bench/judge_throughput.py [--latency-s 0.5] [--concurrency 1 16 64] [--seconds 8]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

import openai  # noqa: E402
import ray  # noqa: E402

from sefl_ray.config import load_config  # noqa: E402
from sefl_ray.judge.run import call_judges, plan_tasks  # noqa: E402
from sefl_ray.testing.loopback import LoopbackConfig, start_loopback_process  # noqa: E402

SEFL_SLEEP_S = 0.5


def systems_with(items: int) -> dict[str, dict[str, dict[str, str]]]:
    task = "### ASSIGNMENT:\nExplain photosynthesis.\n\n### ANSWER:\nPlants eat soil."
    return {name: {f"item-{i}": {"prompt": task, "feedback": f"{name} feedback on item {i}."} for i in range(items)}
            for name in ("base", "tuned")}


def run_level(base_url: str, work: Path, concurrency: int, latency_s: float, seconds: float) -> dict:
    calls = max(concurrency, math.ceil(concurrency * seconds / latency_s))
    items = math.ceil(calls / 2)  # one pair, both orders: two calls per item
    config = load_config(None, [
        f"run_dir={work / f'c{concurrency}'}", "judge.mode=pairwise", "judge.judges=[loop]",
        f"endpoints=[{{name: loop, model: loop-model, base_url: '{base_url}', max_concurrency: 1024}}]",
        f"judge.concurrency={concurrency}",
    ])
    tasks = plan_tasks(systems_with(items), config.judge, config)
    started = time.perf_counter()
    judged = call_judges(config, tasks)
    elapsed = time.perf_counter() - started
    ok = sum(row["status"] == "ok" for row in judged)
    rate = len(judged) / elapsed
    ideal = concurrency / latency_s
    finished = sorted(row["finished_at"] for row in judged)
    steady = (len(finished) - concurrency) / (finished[-1] - finished[concurrency - 1])
    return {"concurrency": concurrency, "judgments": len(judged), "ok": ok, "elapsed_s": elapsed,
            "judgments_per_s": rate, "ideal_per_s": ideal, "of_ideal": rate / ideal, "steady_per_s": steady,
            "steady_of_ideal": steady / ideal,
            "mean_call_s": sum(row["latency_s"] for row in judged) / len(judged)}


def sefl_loop(base_url: str, latency_s: float, calls: int) -> dict:
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    started = time.perf_counter()
    for index in range(calls):
        client.chat.completions.create(model="loop-model", max_tokens=1, temperature=0,
                                       messages=[{"role": "user", "content": f"Which is better, A or B? ({index})"}])
        time.sleep(SEFL_SLEEP_S)
    elapsed = time.perf_counter() - started
    return {"concurrency": "SEFL loop", "judgments": calls, "ok": calls, "elapsed_s": elapsed,
            "judgments_per_s": calls / elapsed, "ideal_per_s": 1 / (latency_s + SEFL_SLEEP_S),
            "of_ideal": (calls / elapsed) * (latency_s + SEFL_SLEEP_S)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--sefl-calls", type=int, default=6)
    args = parser.parse_args()

    server, base_url = start_loopback_process(LoopbackConfig(latency_s=args.latency_s), replies="schema")
    work = Path(tempfile.mkdtemp(prefix="bench-judge-"))
    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    try:
        rows = [run_level(base_url, work, c, args.latency_s, args.seconds) for c in args.concurrency]
        rows.append(sefl_loop(base_url, args.latency_s, args.sefl_calls))
    finally:
        ray.shutdown()
        server.terminate()
        server.wait()
    print(f"loopback judge latency {args.latency_s} s; ideal = C / latency; SEFL loop = 1 call + {SEFL_SLEEP_S} s sleep")
    print_table(rows, ["concurrency", "judgments", "ok", "elapsed_s", "judgments_per_s", "ideal_per_s", "of_ideal",
                       "steady_per_s", "steady_of_ideal", "mean_call_s"])
    best = max(r["judgments_per_s"] for r in rows[:-1])
    print(f"best vs SEFL's loop: {best / rows[-1]['judgments_per_s']:.0f}x")
    path = write_results("judge_throughput", rows, latency_s=args.latency_s, sefl_sleep_s=SEFL_SLEEP_S)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
