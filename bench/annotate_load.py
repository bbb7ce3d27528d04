"""Load on the annotation app: N simulated annotators over HTTP for a while, p95 page and save latency, and no
answer lost (answers in the database = answers the server acknowledged; none refused, none failed).

The app runs as `sefl-ray annotate serve` in its own process (as a study runs it: uvicorn, one process, SQLite in
WAL mode); the annotators are asyncio clients in this process, each with its own connection pool. Each one loops
over its queue as a fast rater would, with no think time (a closed loop, far above a person's pace): load the item's
page, then save the six answers of SEFL's questions one after the other, each with the revision the server last
returned for it (the second time round a queue, answers are revisions). Goal on a 2-core laptop: p95 <= 200 ms for
pages and for saves, 0 lost.
Usage: python bench/annotate_load.py [--seconds 60] [--annotators 20] [--think-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from sefl_ray.annotate.study import create_study  # noqa: E402
from sefl_ray.annotate.synthetic import write_synthetic_run  # noqa: E402
from sefl_ray.config import load_config  # noqa: E402
from sefl_ray.testing.ports import free_port  # noqa: E402

GOAL_P95_S = 0.200
ANSWERS = [("sense", "yes"), ("accuracy", "A"), ("actionability", "B"), ("conciseness", "tie"), ("tone", "A"),
           ("overall", "B")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--think-ms", type=float, default=0, help="pause after each answer (0: closed loop)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="annotate-load-") as work:
        config_path, links, db_path, port = make_study(Path(work), args.annotators)
        server = start_server(config_path, port, Path(work) / "server.log")
        try:
            wait_until_up(f"http://127.0.0.1:{port}/healthz", server, Path(work) / "server.log")
            result = asyncio.run(load(f"http://127.0.0.1:{port}", links, args.seconds, args.think_ms / 1000))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        with sqlite3.connect(db_path) as db:
            in_db = db.execute("SELECT count(*) FROM answers").fetchone()[0]
    rows = [latency_row("page (GET item)", result["page"], args.seconds),
            latency_row("save (POST answer)", result["save"], args.seconds)]
    print_table(rows, ["request", "n", "per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms", "p95_goal_ms", "met"])
    answers = {"annotators": args.annotators, "seconds": args.seconds, "answers_sent": result["sent"],
               "acknowledged": result["acknowledged"], "refused_or_failed": result["sent"] - result["acknowledged"],
               "in_db": in_db, "lost": result["acknowledged"] - in_db}
    print()
    print_table([answers], list(answers))
    path = write_results("annotate_load", rows, answers=answers, think_ms=args.think_ms,
                         errors=result["errors"][:20])
    print(f"\n-> {path}")


def make_study(work: Path, annotators: int) -> tuple[Path, dict[str, str], Path, int]:
    run = work / "run"
    context = write_synthetic_run(run, n_items=10 * annotators)
    port = free_port()
    names = [f"annotator{i:02d}" for i in range(annotators)]
    config_path = work / "study.yaml"
    config_path.write_text(json.dumps({"run_dir": str(run), "annotate": {
        "context": str(context), "annotators": names, "overlap": min(3, annotators), "port": port}}))
    study = create_study(load_config(config_path))
    return config_path, study.annotator_links, study.db_path, port


def start_server(config_path: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "sefl_ray.cli", "annotate", "serve", str(config_path)]
    return subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ})


def wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the app exited: {log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the app did not answer {url} in 60 s")


async def load(base: str, links: dict[str, str], seconds: float, think_s: float) -> dict:
    result = {"page": [], "save": [], "sent": 0, "acknowledged": 0, "errors": []}
    deadline = time.monotonic() + seconds

    async def annotator(link: str) -> None:
        token = link.rstrip("/").rsplit("/", 1)[1]
        revisions: dict[tuple[str, str], int] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            started = time.perf_counter()
            async with http.get(f"{base}/a/{token}/") as response:  # resume: the first item
                html = await response.text()
            result["page"].append(time.perf_counter() - started)
            position = state_of(html)["position"]
            total = state_of(html)["total"]
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with http.get(f"{base}/a/{token}/{position}") as response:
                    html = await response.text()
                    if response.status != 200:
                        result["errors"].append(f"page {response.status}")
                result["page"].append(time.perf_counter() - started)
                slot = state_of(html)["slot"]
                for question, value in ANSWERS:
                    if time.monotonic() >= deadline:
                        return
                    body = {"slot": slot, "question": question, "value": value,
                            "revision": revisions.get((slot, question), 0)}
                    result["sent"] += 1
                    started = time.perf_counter()
                    async with http.post(f"{base}/a/{token}/api/answer", json=body) as response:
                        reply = await response.json()
                    result["save"].append(time.perf_counter() - started)
                    if response.status == 200:
                        result["acknowledged"] += 1
                        revisions[(slot, question)] = reply["revision"]
                    else:
                        result["errors"].append(f"save {response.status}: {reply.get('detail')}")
                    if think_s:
                        await asyncio.sleep(think_s)
                position = position % total + 1

    await asyncio.gather(*(annotator(link) for link in links.values()))
    result["seconds"] = seconds
    return result


def state_of(html: str) -> dict:
    return json.loads(html.split('<script type="application/json" id="state">')[1].split("</script>")[0])


def latency_row(name: str, latencies: list[float], seconds: float) -> dict:
    values = np.array(latencies) * 1000
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"request": name, "n": len(values), "per_s": len(values) / seconds, "p50_ms": float(p50),
            "p95_ms": float(p95),
            "p99_ms": float(p99), "max_ms": float(values.max()), "p95_goal_ms": GOAL_P95_S * 1000,
            "met": bool(p95 <= GOAL_P95_S * 1000)}


if __name__ == "__main__":
    main()
