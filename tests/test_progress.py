"""Progress that moves: synth, infer and judge log done/failed/total, tokens, cost and an ETA every interval while
they run (off a terminal, as here), not only when they end."""

from __future__ import annotations

import json
import logging
import re

from sefl_ray.config import load_config
from sefl_ray.infer.run import run_infer
from sefl_ray.judge.run import run_judge
from sefl_ray.synth.run import run_synth
from sefl_ray.testing.loopback import LoopbackConfig, LoopbackServer
from sefl_ray.testing.schema_replies import schema_reply

LINE = re.compile(r"^(?P<label>[\w ]+): (?P<done>\d+)/(?P<total>\d+) done, (?P<failed>\d+) failed, (?P<tokens>\d+) "
                  r"tokens, \$(?P<cost>[\d.]+).*, elapsed \d+:\d\d:\d\d, ETA (?P<eta>\d+:\d\d:\d\d|\?)$")
PRICED = "price_input_per_1m: 1.0, price_output_per_1m: 2.0"


def progress_lines(caplog, label: str) -> list[dict]:
    lines = [LINE.match(record.getMessage()) for record in caplog.records if record.name == "sefl_ray.progress"]
    return [{**match.groupdict(), "done": int(match["done"]), "total": int(match["total"]),
             "tokens": int(match["tokens"]), "cost": float(match["cost"]), "failed": int(match["failed"])}
            for match in lines if match and match["label"] == label]


def assert_moves(lines: list[dict], total: int, failed: int = 0) -> None:
    assert len(lines) >= 3, lines
    assert all(line["total"] == total for line in lines)
    done = [line["done"] for line in lines]
    assert done == sorted(done) and done[-1] == total
    assert any(0 < count < total for count in done), done  # seen while running, not only at the end
    middle = next(line for line in lines if 0 < line["done"] < total)
    assert middle["eta"] != "?" and middle["tokens"] > 0
    assert lines[-1]["failed"] == failed and lines[-1]["tokens"] >= middle["tokens"]


def test_synth_progress_moves_while_conversations_run(ray_session, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sefl_ray.progress")
    with LoopbackServer(LoopbackConfig(latency_s=0.25), replies=schema_reply) as server:
        config = load_config(None, [
            f"run_dir={tmp_path}", "progress_interval_s=0.4",
            f"endpoints=[{{name: loop, model: loop-model, base_url: '{server.base_url}', {PRICED}}}]",
            "synth.teacher_endpoint=loop", "synth.student_endpoint=loop", "synth.num_conversations=8",
            "synth.concurrency=2", "synth.batch_size=2",
        ])
        run_synth(config)
    lines = progress_lines(caplog, "synth")
    assert_moves(lines, total=8)
    assert lines[-1]["cost"] > 0


def test_judge_and_infer_progress_moves(ray_session, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sefl_ray.progress")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"i{i}", "prompt": f"Add {i} and 1."}) + "\n" for i in range(8)))
    endpoint = "endpoints=[{{name: loop, model: m, base_url: '{}', " + PRICED + "}}]"
    with LoopbackServer(LoopbackConfig(latency_s=0.3), replies=["Check the sum."]) as server:
        for system in ("base", "tuned"):
            run_infer(load_config(None, [
                f"run_dir={tmp_path}", "progress_interval_s=0.4", endpoint.format(server.base_url),
                "infer.mode=endpoint", "infer.endpoint=loop", f"infer.input={items}", f"infer.name={system}",
                "infer.batch_size=2", "infer.concurrency=2",
            ]))
    assert_moves(progress_lines(caplog, "infer base"), total=8)
    with LoopbackServer(LoopbackConfig(latency_s=0.2),
                        replies=[json.dumps({"rationale": "clearer", "verdict": "A"}), "no verdict here"]) as server:
        run_judge(load_config(None, [
            f"run_dir={tmp_path}", "progress_interval_s=0.4", endpoint.format(server.base_url),
            "judge.judges=[loop]", "judge.mode=pairwise", "judge.concurrency=2", "judge.n_bootstrap=0",
        ]))
    assert_moves(progress_lines(caplog, "judge"), total=16, failed=8)  # every other answer has no verdict
