"""Batch inference on 50 rows: local model actors with the tiny model, and a faulty endpoint."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sefl_ray.config import load_config
from sefl_ray.errors import InputNotFoundError
from sefl_ray.infer.run import run_infer
from sefl_ray.testing.loopback import LoopbackConfig, LoopbackServer


@pytest.fixture
def test_set(tmp_path):
    path = tmp_path / "test.jsonl"
    with open(path, "w") as out:
        for index in range(50):
            out.write(json.dumps({"id": f"item-{index}", "assignment": f"Compute {index} + {index}.",
                                  "submission": f"It is {index * 3}."}) + "\n")
    return path


def test_local_model_actors_give_one_row_per_input(ray_session, tiny_model_dir, test_set, tmp_path):
    config = load_config(None, [f"run_dir={tmp_path / 'run'}", f"infer.input={test_set}", "infer.mode=local",
                                f"infer.model={tiny_model_dir}", "infer.max_new_tokens=8", "infer.batch_size=10"])
    rows = pq.read_table(run_infer(config)).to_pylist()
    assert len(rows) == 50 and {r["item_id"] for r in rows} == {f"item-{i}" for i in range(50)}
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["completion_tokens"] >= 1 and r["feedback"] is not None for r in rows)
    assert "### ASSIGNMENT:" in rows[0]["prompt"] and rows[0]["system"]


def test_endpoint_with_faults_keeps_failed_rows(ray_session, test_set, tmp_path):
    """jobs/infer.yaml as shipped, its `feedback` endpoint pointed at a loopback server that fails half the calls."""
    faults = LoopbackConfig(rate_500=0.5, seed=2)
    with LoopbackServer(faults) as server:
        config = load_config(Path(__file__).resolve().parents[1] / "jobs" / "infer.yaml", [
            f"run_dir={tmp_path / 'run'}", f"infer.input={test_set}",
            f"endpoints=[{{name: feedback, model: feedback, base_url: '{server.base_url}'}}]",
            "retry.max_attempts=2", "retry.base_delay_s=0.01",
        ])
        rows = pq.read_table(run_infer(config)).to_pylist()
    assert len(rows) == 50
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all("HTTP 500" in r["error"] for r in failed)
    assert all(r["feedback"].startswith("echo:") for r in rows if r["status"] == "ok")


def test_missing_input_is_a_clear_error(tmp_path):
    config = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(InputNotFoundError, match="sefl-ray export"):
        run_infer(config)


@pytest.mark.slow
def test_vllm_mode_writes_the_local_modes_columns_one_row_per_input(ray_session, embedded_model_dir, tiny_model_dir,
                                                                   tmp_path):
    """jobs/local.yaml with infer.mode=vllm (Ray Data LLM, the embedded SmolLM2) and in local mode (the tiny model,
    to keep it short), on the same 12 rows of which one is over the context: the same columns and ids in the same
    order, and that row failed with its reason in both."""
    pytest.importorskip("vllm", reason="vLLM is not installed (`make vllm`)")
    test_set = tmp_path / "test.jsonl"
    rows_in = [{"id": f"item-{i}", "assignment": f"Compute {i} + {i}.", "submission": f"It is {i * 3}."}
               for i in range(11)]
    rows_in.append({"id": "too-long", "prompt": "word " * 9000})  # SmolLM2's context is 8192 tokens
    test_set.write_text("".join(json.dumps(row) + "\n" for row in rows_in))
    common = [f"infer.input={test_set}", "infer.max_new_tokens=12", "infer.batch_size=4"]
    jobs = Path(__file__).resolve().parents[1] / "jobs" / "local.yaml"
    vllm_rows = pq.read_table(run_infer(load_config(jobs, [
        f"run_dir={tmp_path / 'vllm'}", "infer.mode=vllm", *common]))).to_pylist()
    local = pq.read_table(run_infer(load_config(jobs, [
        f"run_dir={tmp_path / 'local'}", "infer.mode=local", f"infer.model={tiny_model_dir}", *common])))
    assert pq.read_schema(tmp_path / "vllm" / "infer" / "base" / "outputs.parquet") == local.schema
    local_rows = local.to_pylist()
    assert [r["item_id"] for r in vllm_rows] == [r["item_id"] for r in local_rows] == [r["id"] for r in rows_in]
    for rows, context in ((vllm_rows, "8192"), (local_rows, "context")):
        by_id = {r["item_id"]: r for r in rows}
        too_long = by_id.pop("too-long")
        assert too_long["status"] == "failed" and context in too_long["error"], too_long["error"]
        assert all(r["status"] == "ok" and r["feedback"] and 0 < r["completion_tokens"] <= 12
                   and r["prompt_tokens"] > 20 for r in by_id.values())
    summary = json.loads((tmp_path / "vllm" / "infer" / "base" / "summary.json").read_text())
    assert (summary["mode"], summary["rows"], summary["ok"], summary["failed"]) == ("vllm", 12, 11, 1)
