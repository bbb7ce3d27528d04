"""Chaos: while synth and judge run, SIGKILL at random the Ray worker processes this test's own Ray started for
them (picked by pid among this process's descendants that are calling the vendor, never by name). The same command run again then finishes
with no row lost, no id twice, and at most 1.05x the API calls of a clean run."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections.abc import Callable

import psutil
import pyarrow.parquet as pq

from sefl_ray.data.records import read_records
from sefl_ray.judge.run import run_judge
from sefl_ray.synth.run import run_synth
from sefl_ray.testing.loopback import LoopbackConfig, LoopbackServer
from sefl_ray.testing.schema_replies import schema_reply
from tests.test_judge import always_a, judge_config
from tests.test_synth import CALLS_PER_CONVERSATION, synth_config

KILLS = 3
ITEMS = 60  # judge items: 240 calls


def workers_calling(port: int) -> list[psutil.Process]:
    """This test's own descendants that hold a connection to the vendor on `port`: the Ray workers doing the
    stage's calls (found by what they do, not by their name)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any(c.raddr and c.raddr.port == port for c in process.net_connections(kind="tcp")):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def under_chaos(stage: Callable[[], object], port: int, seed: int) -> list[int]:
    """Run `stage` while another thread kills KILLS of its workers at random moments; return the killed pids.
    The stage may fail under the kills: what it wrote must still let the re-run finish the job."""
    rng, killed, done = random.Random(seed), [], threading.Event()

    def kill_some() -> None:
        while len(killed) < KILLS and not done.wait(rng.uniform(0.8, 2.0)):
            candidates = workers_calling(port)
            if candidates:
                victim = rng.choice(candidates)
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                    killed.append(victim.pid)
                except ProcessLookupError:
                    pass

    killer = threading.Thread(target=kill_some, daemon=True)
    killer.start()
    try:
        stage()
    except Exception:  # noqa: BLE001 - a stage may give up under SIGKILL; the re-run below is what must hold
        pass
    finally:
        done.set()
        killer.join()
    return killed


def test_synth_survives_random_worker_kills(ray_session, tmp_path):
    conversations = 100
    with LoopbackServer(LoopbackConfig(latency_s=0.15), replies=schema_reply) as server:
        config = synth_config(tmp_path, server, f"synth.num_conversations={conversations}",
                              "synth.samples_per_source=5", "synth.concurrency=8", "synth.batch_size=2",
                              "synth.num_actors=4",  # a killed actor loses only its own rows in flight
                              "retry.max_attempts=2")
        killed = under_chaos(lambda: run_synth(config), server.port, seed=int.from_bytes(os.urandom(2), "big"))
        assert killed, "no worker was killed: the stage ended before the chaos began"
        records_dir = run_synth(config)
        total_calls = server.count()
    records = read_records(records_dir).to_pylist()
    assert len(records) == conversations and len({r["id"] for r in records}) == conversations
    assert {r["status"] for r in records} == {"ok"}, {r["error"] for r in records if r["status"] != "ok"}
    clean_calls = conversations * CALLS_PER_CONVERSATION
    assert total_calls <= 1.05 * clean_calls, f"{total_calls} calls for a {clean_calls}-call job ({killed=})"


def test_judge_survives_random_worker_kills(ray_session, tmp_path):
    inputs = tmp_path / "outputs.jsonl"
    inputs.write_text("".join(
        json.dumps({"item_id": f"item-{i}", "prompt": f"Add {i} and {i + 1}.", "system": system, "feedback": text})
        + "\n" for i in range(ITEMS) for system, text in (("short", "Wrong."), ("long", "Recount the units."))))
    with LoopbackServer(LoopbackConfig(latency_s=0.15), replies=always_a) as server:
        config = judge_config(tmp_path, inputs, {"j1": server}, "judge.concurrency=8", "judge.batch_size=2",
                              "judge.num_actors=4",
                              "retry.max_attempts=2")
        killed = under_chaos(lambda: run_judge(config), server.port, seed=int.from_bytes(os.urandom(2), "big"))
        assert killed, "no worker was killed: the stage ended before the chaos began"
        run_judge(config)
        total_calls = server.count()
    judgments = pq.read_table(tmp_path / "judge" / "judgments.parquet").to_pylist()
    clean_calls = ITEMS * 4  # per item: the pair in both orders, and a rubric score for each system
    assert len(judgments) == clean_calls and len({j["task_id"] for j in judgments}) == clean_calls
    assert {j["status"] for j in judgments} == {"ok"}
    assert total_calls <= 1.05 * clean_calls, f"{total_calls} calls for a {clean_calls}-call job ({killed=})"
