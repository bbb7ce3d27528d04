"""Budgets and retries mean what they say: a budget holds per run dir across resumes, a cached call costs
nothing, and a retried row is a fresh attempt rather than the cached reply that failed."""

from __future__ import annotations

import json
import shutil

from sefl_ray.data.records import read_records
from sefl_ray.synth.run import run_synth
from sefl_ray.testing.loopback import LoopbackServer
from sefl_ray.testing.schema_replies import schema_reply
from tests.test_synth import synth_config


def tokens_of(records: list[dict]) -> int:
    return sum(u["prompt_tokens"] + u["completion_tokens"] for r in records for u in r["usage"])


def test_a_budget_holds_across_resumes_and_cached_calls_cost_nothing(ray_session, tmp_path):
    with LoopbackServer(replies=schema_reply) as server:
        one = synth_config(tmp_path, server, "synth.num_conversations=1")
        probe = run_synth(one.model_copy(update={"run_dir": str(tmp_path / "probe")}))
        per_conversation = tokens_of(read_records(probe).to_pylist())
        capped = synth_config(tmp_path, server, "synth.num_conversations=20", "synth.concurrency=1",
                              "synth.num_actors=1", "synth.batch_size=1",
                              f"synth.budget_tokens={per_conversation * 4}")
        records_dir = run_synth(capped)
        first = read_records(records_dir).to_pylist()
        assert 4 <= len(first) < 20
        calls_after_first = server.count()
        run_synth(capped)  # the same budget, the same run dir: it was spent here already
        assert server.count() == calls_after_first
        summary = json.loads((records_dir.parent / "summary.json").read_text())
        assert summary["skipped_by_budget"] == 20 - len(first) and read_records(records_dir).num_rows == len(first)

        # every answer is in the call cache: made again from it, the rows cost nothing and the budget lets all pass
        shutil.rmtree(records_dir)
        server.reset()
        cached = synth_config(tmp_path, server, f"synth.num_conversations={len(first)}",
                              f"synth.budget_tokens={per_conversation}")
        again = read_records(run_synth(cached)).to_pylist()
        assert server.count() == 0 and len(again) == len(first) and {r["status"] for r in again} == {"ok"}
        assert tokens_of(again) == 0 and all(u["calls"] == 0 for r in again for u in r["usage"])


def test_retry_failed_makes_a_fresh_attempt_not_the_cached_failure(ray_session, tmp_path):
    first_seeds: set[int] = set()

    def invalid_on_a_rows_first_seed(body: dict) -> str:
        is_student = "StudentAnswer" in json.dumps(body.get("response_format", {}))
        if is_student and (not first_seeds or body["seed"] in first_seeds):
            first_seeds.add(body["seed"])
            return "not json at all"
        return schema_reply(body)

    with LoopbackServer(replies=invalid_on_a_rows_first_seed) as server:
        config = synth_config(tmp_path, server, "synth.num_conversations=1")
        records_dir = run_synth(config)
        assert [r["status"] for r in read_records(records_dir).to_pylist()] == ["failed"]
        calls_before = server.count()
        run_synth(config)  # synth.retry_failed is on by default
        new_requests = server.requests[calls_before:]
        assert new_requests, "the retry asked the endpoint again instead of replaying the cached failure"
        assert all(r.body["seed"] not in first_seeds for r in new_requests)
        records = read_records(records_dir).to_pylist()
        assert [r["status"] for r in records] == ["ok"]
        server.reset()
        run_synth(config)  # ok now: nothing left to retry
        assert server.count() == 0
