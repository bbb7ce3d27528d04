"""`sefl-ray pipeline` end to end on the test kit: a loopback teacher, student and judge, the tiny model as the base.

One real run of every stage, then the same command again (nothing may run, nobody may be called), then a changed
judge config (only judge and report may run), then `--only` and `--from`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sefl_ray.config import load_config
from sefl_ray.errors import ConfigError
from sefl_ray.manifest import read_manifest
from sefl_ray.pipeline import STAGE_NAMES, UPSTREAM, plan_stages, run_pipeline, stage_fingerprints
from sefl_ray.testing.loopback import LoopbackServer
from sefl_ray.testing.schema_replies import grounded_schema_reply


def pipeline_config(run_dir: Path, base_url: str, model_dir: Path, *overrides: str):
    return load_config(None, [
        f"run_dir={run_dir}", f"endpoints=[{{name: loop, model: loop-model, base_url: '{base_url}'}}]",
        "serve.enabled=false", "models.prepare=[]", "retry.base_delay_s=0.01",
        "synth.teacher_endpoint=loop", "synth.student_endpoint=loop", "synth.num_conversations=8",
        "synth.num_actors=1", "export.valid_fraction=0.25",
        f"train.model={model_dir}", "train.num_workers=1", "train.max_steps=2", "train.max_seq_len=1024",
        "train.checkpoint_every_steps=100", "infer.max_new_tokens=8", "infer.batch_size=4",
        "judge.judges=[loop]", "judge.n_bootstrap=20", *overrides,
    ])


def finished_at(run_dir: Path) -> dict[str, str]:
    return {name: record["finished_at"] for name, record in read_manifest(run_dir)["stages"].items()}


@pytest.mark.slow
def test_pipeline_runs_every_stage_once_and_reruns_only_what_changed(ray_session, tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    with LoopbackServer(replies=grounded_schema_reply) as server:
        config = pipeline_config(run_dir, server.base_url, tiny_model_dir)
        run_pipeline(config)

        manifest = read_manifest(run_dir)
        assert list(manifest["stages"]) == STAGE_NAMES
        assert all(record["status"] == "done" for record in manifest["stages"].values()), manifest["stages"]
        for record in manifest["stages"].values():
            assert all(Path(path).exists() for path in record["artifacts"]), record
        assert manifest["fingerprints"] == stage_fingerprints(config)
        assert manifest["environment"]["packages"]["ray"] and manifest["config"]["run_dir"] == str(run_dir)
        synth = manifest["stages"]["synth"]
        assert synth["rows"] == 8 and synth["tokens"] > 0
        assert manifest["stages"]["infer"]["systems"].keys() == {"base", "tuned"}
        assert manifest["stages"]["judge"]["rows"] > 0 and manifest["stages"]["train"]["steps"] == 2
        assert (run_dir / "train" / "merged" / "config.json").exists()
        report = (run_dir / "report" / "report.html").read_text()
        assert 'href="../manifest.json"' in report and "<td>synth</td>" in report

        calls_after_first_run = len(server.requests)
        first = finished_at(run_dir)
        run_pipeline(config)
        assert finished_at(run_dir) == first, "a second run of an unchanged config did work"
        assert len(server.requests) == calls_after_first_run, "a second run called the API"

        changed = pipeline_config(run_dir, server.base_url, tiny_model_dir, "judge.mode=pairwise")
        run_pipeline(changed)
        after_change = finished_at(run_dir)
        rerun = {name for name in STAGE_NAMES if after_change[name] != first[name]}
        assert rerun == {"judge", "report"}
        assert json.loads((run_dir / "judge" / "summary.json").read_text())["rubric"] == []

        run_pipeline(changed, only="export")
        after_only = finished_at(run_dir)
        assert {name for name in STAGE_NAMES if after_only[name] != after_change[name]} == {"export"}
        # export re-ran under --only, so what reads it is stale now and the next plain run re-runs it.
        plan = plan_stages(read_manifest(run_dir), stage_fingerprints(changed))
        assert [name for name in STAGE_NAMES if plan[name] != "skip"] == ["train", "infer", "judge", "report"]
        assert plan["train"] == "upstream re-ran"


def test_from_and_only_name_real_stages_and_force_them(tmp_path):
    fingerprints = stage_fingerprints(load_config(Path(__file__).resolve().parents[1] / "jobs" / "local.yaml", [f"run_dir={tmp_path}"]))
    done = {"stages": {name: {"status": "done", "fingerprint": fingerprints[name], "artifacts": [],
                              "finished_at": "t"} for name in STAGE_NAMES}}
    for name, record in done["stages"].items():
        record["upstream_finished_at"] = "t" if name in UPSTREAM else None
    assert set(plan_stages(done, fingerprints).values()) == {"skip"}
    assert plan_stages(done, fingerprints, start="judge") == {
        **{name: "skip" for name in STAGE_NAMES[:-2]}, "judge": "forced", "report": "forced"}
    assert [name for name, why in plan_stages(done, fingerprints, only="train").items() if why != "skip"] == ["train"]
    with pytest.raises(ConfigError, match="--from jugde: no such stage"):
        plan_stages(done, fingerprints, start="jugde")
    done["stages"]["train"]["fingerprint"] = "something else"
    assert plan_stages(done, fingerprints)["train"] == "config changed"
    assert plan_stages(done, fingerprints)["report"] == "upstream runs"
