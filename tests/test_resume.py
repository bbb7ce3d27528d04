"""Damaged state left by a crash, a kill or a bad disk: set aside with a warning, what it held redone, the run
finishes. Real files damaged the way such events damage them; a real loopback server counts the calls."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sefl_ray.data.records import read_records
from sefl_ray.durable import write_json, write_parquet
from sefl_ray.llm.cache import CallCache
from sefl_ray.pipeline import plan_stages
from sefl_ray.stages import stage_fingerprints
from sefl_ray.synth.run import run_synth
from sefl_ray.testing.loopback import LoopbackServer
from sefl_ray.testing.schema_replies import schema_reply
from tests.test_pipeline import all_done, local_config
from tests.test_synth import CALLS_PER_CONVERSATION, synth_config


def set_aside_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.unreadable-*"))


def test_a_truncated_records_file_is_set_aside_and_its_rows_redone_from_the_cache(ray_session, tmp_path, caplog):
    with LoopbackServer(replies=schema_reply) as server:
        config = synth_config(tmp_path, server, "synth.num_conversations=12", "synth.batch_size=3",
                              "synth.concurrency=3")
        records_dir = run_synth(config)
        parts = sorted(records_dir.rglob("*.parquet"))
        assert len(parts) > 1
        damaged = parts[0]
        lost_rows = pq.read_table(damaged).num_rows
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # a writer killed half-way
        calls_before = server.count()
        with caplog.at_level("WARNING"):
            run_synth(config)
        assert server.count() == calls_before, "the redone rows' calls were answered before: the cache has them"
    assert [p.name.split(".unreadable-")[0] for p in set_aside_files(records_dir)] == [damaged.name]
    assert f"{damaged.name} is unreadable" in caplog.text and "set aside" in caplog.text
    records = read_records(records_dir).to_pylist()
    assert len(records) == 12 and len({r["id"] for r in records}) == 12 and {r["status"] for r in records} == {"ok"}
    summary = json.loads((records_dir.parent / "summary.json").read_text())
    assert summary["set_aside_files"] == 1 and summary["attempted_this_run"] == lost_rows > 0


def test_a_damaged_call_cache_shard_keeps_its_good_lines(tmp_path, caplog):
    cache_dir = tmp_path / "call_cache"
    writer = CallCache(cache_dir)
    for index in range(4):
        writer.put(f"key-{index}", {"text": f"answer {index}"})
    shard = next(cache_dir.glob("*.jsonl"))
    lines = shard.read_bytes().splitlines(keepends=True)
    # line 2 holds bytes that are not UTF-8 (a bad sector, a foreign writer); the last is cut mid-line (a kill)
    lines[1] = lines[1].replace(b"answer 1", b"answer \xff\xfe")
    lines[3] = lines[3][: len(lines[3]) // 2]
    shard.write_bytes(b"".join(lines))
    with caplog.at_level("WARNING"):
        reader = CallCache(cache_dir)
        found = {key: reader.get(key) for key in ("key-0", "key-1", "key-2", "key-3")}
    assert found == {"key-0": {"text": "answer 0"}, "key-1": None, "key-2": {"text": "answer 2"}, "key-3": None}
    assert f"{shard.name}: 1 damaged line(s) skipped" in caplog.text  # the cut last line is a miss, not an entry


def test_synth_finishes_over_a_damaged_call_cache_and_pays_only_for_the_damaged_calls(ray_session, tmp_path):
    with LoopbackServer(replies=schema_reply) as server:
        config = synth_config(tmp_path, server, "synth.num_conversations=4", "synth.concurrency=1")
        records_dir = run_synth(config)
        assert server.count() == 4 * CALLS_PER_CONVERSATION
        cache_dir = tmp_path / "run" / "synth" / "call_cache"
        for shard in cache_dir.glob("*.jsonl"):
            lines = shard.read_bytes().splitlines(keepends=True)
            lines[-1] = b"\xc3\x28" + lines[-1][: len(lines[-1]) // 2]  # invalid UTF-8, then a cut line
            shard.write_bytes(b"".join(lines))
        damaged_calls = len(list(cache_dir.glob("*.jsonl")))
        for part in records_dir.rglob("*.parquet"):  # every row must be made again, from the cache where it can
            part.unlink()
        server.reset()
        run_synth(config)
        # each damaged line is one call asked again; its reply is the same, so the rest of its conversation hits
        assert server.count() == damaged_calls
    records = read_records(records_dir).to_pylist()
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}


def test_an_unreadable_summary_or_output_is_set_aside_and_its_stage_runs_again(tmp_path, caplog):
    fingerprints = stage_fingerprints(local_config(tmp_path))
    (tmp_path / "out").mkdir()
    write_json(tmp_path / "train" / "summary.json", {"steps": 4})
    write_parquet(tmp_path / "infer" / "base" / "outputs.parquet", pa.table({"item_id": ["a"]}))
    assert set(plan_stages(all_done(fingerprints, ["out"]), fingerprints, tmp_path).values()) == {"skip"}

    (tmp_path / "train" / "summary.json").write_text('{"steps": 4, "fin')  # cut short by a full disk
    with caplog.at_level("WARNING"):
        plan = plan_stages(all_done(fingerprints, ["out"]), fingerprints, tmp_path)
    assert plan["train"] == "unreadable: train/summary.json" and plan["infer"] == "upstream runs"
    assert plan["synth"] == plan["export"] == "skip"
    assert [p.name.split(".unreadable-")[0] for p in set_aside_files(tmp_path)] == ["summary.json"]
    assert "train/summary.json is unreadable" in caplog.text

    (tmp_path / "infer" / "base" / "outputs.parquet").write_bytes(b"PAR1 half a file")
    plan = plan_stages(all_done(fingerprints, ["out"]), fingerprints, tmp_path)
    assert plan["train"] == "skip" and plan["infer"] == "unreadable: infer/base/outputs.parquet"
