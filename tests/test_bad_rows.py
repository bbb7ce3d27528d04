"""One bad row never kills a job: a loopback vendor that answers some rows with a lone surrogate, a body that is
not a completion, or JSON of the wrong shape; a rate-limiter actor killed mid-run; a call cache that cannot be
written after the calls were paid for. Each job finishes, with every row there, ok or failed with its reason."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import ray

from sefl_ray.data.records import read_records
from sefl_ray.infer.run import run_infer
from sefl_ray.judge.run import run_judge
from sefl_ray.llm.ratelimit import LIMITER_NAME_PREFIX
from sefl_ray.synth.run import run_synth
from sefl_ray.testing.loopback import LoopbackServer, RawReply
from sefl_ray.testing.schema_replies import schema_reply
from tests.test_judge import always_a, judge_config, write_outputs
from tests.test_synth import synth_config

HOSTILE_REPLIES = {
    3: ("\ud800 a lone surrogate", "not valid Unicode"),
    5: (RawReply("<html>upstream busy</html>", content_type="text/html"), "malformed response"),
    7: (RawReply('{"choices": "none", "usage": 7}'), "malformed response"),
}


def hostile(normal):
    """`normal`'s reply, except for the rows whose prompt names a number in HOSTILE_REPLIES."""

    def reply(body: dict):
        prompt = json.dumps(body["messages"])
        for number, (bad, _) in HOSTILE_REPLIES.items():
            if re.search(rf"(Compute|Add) {number} ", prompt):
                return bad
        return normal(body)

    return reply


def assert_only_the_hostile_rows_failed(rows: list[dict], key) -> None:
    for row in rows:
        number = key(row)
        if number in HOSTILE_REPLIES:
            assert row["status"] == "failed" and HOSTILE_REPLIES[number][1] in row["error"], row
        else:
            assert row["status"] == "ok", row


def test_infer_rows_with_hostile_replies_fail_alone(ray_session, tmp_path):
    test_set = tmp_path / "test.jsonl"
    test_set.write_text("".join(json.dumps({"id": f"item-{i}", "assignment": f"Compute {i} + {i}.",
                                            "submission": "It is 1."}) + "\n" for i in range(10)))
    with LoopbackServer(replies=hostile(lambda body: "Recount.")) as server:
        config = judge_config(tmp_path, test_set, {"feedback": server}, f"infer.input={test_set}",
                              "infer.mode=endpoint", "infer.endpoint=feedback", "retry.max_attempts=2")
        rows = pq.read_table(run_infer(config)).to_pylist()
    assert [row["item_id"] for row in rows] == [f"item-{i}" for i in range(10)]
    assert_only_the_hostile_rows_failed(rows, lambda row: int(row["item_id"].split("-")[1]))


def test_judge_finishes_over_hostile_replies_and_a_cache_it_cannot_write(ray_session, tmp_path):
    inputs = write_outputs(tmp_path / "outputs.jsonl")
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "call_cache").write_text("a file where the cache folder should be")
    with LoopbackServer(replies=hostile(always_a)) as server:
        config = judge_config(tmp_path, inputs, {"j1": server}, "retry.max_attempts=2")
        run_judge(config)
    judgments = pq.read_table(tmp_path / "judge" / "judgments.parquet").to_pylist()
    assert len(judgments) == 48 and len({r["task_id"] for r in judgments}) == 48  # 12 items x (2 orders + rubric x 2)
    assert (tmp_path / "judge" / "call_cache").is_file()  # nothing was cached, and no row failed for it
    assert_only_the_hostile_rows_failed(judgments, lambda row: int(row["item_id"].split("-")[1]))


def test_synth_finishes_when_its_rate_limiter_dies_mid_run(ray_session, tmp_path):
    served = []

    def kill_the_limiter_on_the_seventh_call(body: dict) -> str:
        served.append(1)
        if len(served) == 7:
            for actor in ray.util.list_named_actors(all_namespaces=True):
                if actor["name"].startswith(LIMITER_NAME_PREFIX):
                    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
        return schema_reply(body)

    with LoopbackServer(replies=kill_the_limiter_on_the_seventh_call) as server:
        base = synth_config(tmp_path, server, "synth.num_conversations=6", "synth.concurrency=1")
        endpoint = base.endpoints[0].model_copy(update={"rpm": 60000})
        records_dir = run_synth(base.model_copy(update={"endpoints": [endpoint]}))
    records = read_records(records_dir).to_pylist()
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] == "failed"]
    assert len(ok) >= 2 and len(failed) >= 3 and len(ok) + len(failed) == 6
    assert all("Actor" in r["error"] and "died" in r["error"].lower() for r in failed), [r["error"] for r in failed]


def test_a_prompt_larger_than_the_endpoints_tpm_fails_its_row_at_once(ray_session, tmp_path):
    test_set = tmp_path / "test.jsonl"
    rows = [{"id": f"item-{i}", "assignment": f"Compute {i} + {i}.", "submission": "It is 1."} for i in range(4)]
    rows[2]["submission"] = "word " * 100_000  # about 125k tokens, over the 100k a minute the endpoint allows
    test_set.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with LoopbackServer(replies=lambda body: "Recount.") as server:
        config = judge_config(tmp_path, test_set, {"feedback": server}, f"infer.input={test_set}",
                              "infer.mode=endpoint", "infer.endpoint=feedback", "infer.max_new_tokens=16")
        endpoint = config.endpoints[0].model_copy(update={"tpm": 100_000})
        rows = pq.read_table(run_infer(config.model_copy(update={"endpoints": [endpoint]}))).to_pylist()
        assert server.count() == 3, "the oversized prompt was never sent"
    assert [row["status"] for row in rows] == ["ok", "ok", "failed", "ok"]
    assert "more than endpoint 'feedback' allows per minute (tpm 100000)" in rows[2]["error"]
