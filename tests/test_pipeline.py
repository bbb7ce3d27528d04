"""`sefl-ray pipeline` end to end on the test kit: a loopback teacher, student and judge, the tiny model as the base.

One real run of every stage, then the same command again (nothing may run, nobody may be called), then a changed
judge config (only judge and report may run), then `--only` and `--from`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from sefl_ray.config import load_config
from sefl_ray.errors import ConfigError
from sefl_ray.manifest import read_manifest
from sefl_ray.pipeline import plan_stages, run_pipeline
from sefl_ray.stages import STAGES, stage_fingerprints, stage_names
from sefl_ray.testing.loopback import LoopbackServer
from sefl_ray.testing.ports import free_port
from sefl_ray.testing.schema_replies import grounded_schema_reply


STAGE_NAMES = stage_names()
UPSTREAM = {stage.name: stage.upstream for stage in STAGES if stage.upstream}
# What `pipeline` runs on a config that leaves the human study off (annotate.enabled: false, the default)
PIPELINE_NAMES = [name for name in STAGE_NAMES if name != "annotate"]


def pipeline_config(run_dir: Path, base_url: str, model_dir: Path, *overrides: str):
    return load_config(None, [
        f"run_dir={run_dir}", f"endpoints=[{{name: loop, model: loop-model, base_url: '{base_url}'}}]",
        "serve.enabled=false", "models.prepare=[]", "retry.base_delay_s=0.01",
        "synth.teacher_endpoint=loop", "synth.student_endpoint=loop", "synth.num_conversations=8",
        "synth.num_actors=1", "gate.endpoint=loop", "export.valid_fraction=0.25",
        f"train.model={model_dir}", "train.num_workers=1", "train.max_steps=2", "train.max_seq_len=1024",
        "train.checkpoint_every_steps=100", "infer.max_new_tokens=8", "infer.batch_size=4",
        "judge.judges=[loop]", "judge.n_bootstrap=20", *overrides,
    ])


def run_ids(run_dir: Path) -> dict[str, str]:
    """Each stage's run id: a new one means the stage ran again."""
    return {name: record["run_id"] for name, record in read_manifest(run_dir)["stages"].items()}


@pytest.mark.slow
def test_pipeline_runs_every_stage_once_and_reruns_only_what_changed(ray_session, tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    with LoopbackServer(replies=grounded_schema_reply) as server:
        config = pipeline_config(run_dir, server.base_url, tiny_model_dir)
        run_pipeline(config)

        manifest = read_manifest(run_dir)
        assert list(manifest["stages"]) == PIPELINE_NAMES
        assert all(record["status"] == "done" for record in manifest["stages"].values()), manifest["stages"]
        for record in manifest["stages"].values():
            assert all((run_dir / path).exists() for path in record["artifacts"]), record
        assert manifest["stages"]["train"]["artifacts"] == ["train/merged"]
        assert manifest["stages"]["synth"]["environment"]["packages"]["ray"]
        assert manifest["fingerprints"] == stage_fingerprints(config)
        assert manifest["config"]["run_dir"] == str(run_dir)
        synth = manifest["stages"]["synth"]
        assert synth["rows"] == 8 and synth["tokens"] > 0
        assert manifest["stages"]["infer"]["systems"].keys() == {"base", "tuned"}
        assert manifest["stages"]["judge"]["rows"] > 0 and manifest["stages"]["train"]["steps"] == 2
        assert (run_dir / "train" / "merged" / "config.json").exists()
        report = (run_dir / "report" / "report.html").read_text()
        assert 'href="../manifest.json"' in report and "<td>synth</td>" in report

        calls_after_first_run = len(server.requests)
        first = run_ids(run_dir)
        run_pipeline(config)
        assert run_ids(run_dir) == first, "a second run of an unchanged config did work"
        assert len(server.requests) == calls_after_first_run, "a second run called the API"

        changed = pipeline_config(run_dir, server.base_url, tiny_model_dir, "judge.mode=pairwise")
        run_pipeline(changed)
        after_change = run_ids(run_dir)
        rerun = {name for name in PIPELINE_NAMES if after_change[name] != first[name]}
        assert rerun == {"judge", "report"}
        assert json.loads((run_dir / "judge" / "summary.json").read_text())["rubric"] == []

        run_pipeline(changed, only="export")
        after_only = run_ids(run_dir)
        assert {name for name in PIPELINE_NAMES if after_only[name] != after_change[name]} == {"export"}
        # export re-ran under --only, so what reads it is stale now and the next plain run re-runs it.
        plan = plan_stages(read_manifest(run_dir), stage_fingerprints(changed), run_dir, config=changed)
        assert [name for name in STAGE_NAMES if plan[name] != "skip"] == ["train", "infer", "judge", "report"]
        assert plan["train"] == "upstream re-ran"

        # Fewer conversations than were synthesized: synth (all 6 rows already ok, so no call) writes a plan of 6,
        # the gate rules on only the rows synth planned, not every record in the folder (its calls all cached),
        # and the export holds those.
        fewer = pipeline_config(run_dir, server.base_url, tiny_model_dir, "synth.num_conversations=6")
        calls_before = len(server.requests)
        run_pipeline(fewer, only="synth")
        run_pipeline(fewer, only="gate")
        assert len(server.requests) == calls_before
        run_pipeline(fewer, only="export")
        exported = json.loads((run_dir / "export" / "export_summary.json").read_text())["records"]
        assert exported["total"] == 6 and exported["exported"] == exported["ok"] > 0


@pytest.mark.slow
def test_the_demo_path_serves_its_own_model_to_synth_and_judge(ray_session, tmp_path, tiny_model_dir, caplog):
    """`make demo` runs `sefl-ray pipeline jobs/local.yaml`, whose stages call the run's own Serve app
    (serve.enabled: true). The same file, scaled down: the tiny model behind that app (on a free port) is teacher,
    student and judge, and the base model to fine-tune. Serve must come up before synth and judge, answer their
    calls, and be gone afterwards. Synth uses the `sefl` preset, whose schemas leave string lengths open: under a
    length-bounded string xgrammar 0.2.9 lets raw control characters through, which a random model emits and no
    JSON parser reads (a random model only: the embedded SmolLM2 does not write them)."""
    from ray import serve

    from sefl_ray.serve.local import APP_NAME

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "tiny")  # a 4k context: synth's prompts need ~1k tokens
    model_config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**model_config, "max_position_embeddings": 4096}))
    port = free_port()
    served = f"http://127.0.0.1:{port}/v1"
    config = local_config(
        tmp_path / "run", "models.prepare=[]", f"serve.port={port}", f"serve.app.model={model_dir}",
        "serve.app.served_model_name=tiny", "serve.app.torch_threads=1",
        f"endpoints=[{{name: local, model: tiny, base_url: '{served}', timeout_s: 120}}]",
        "synth.preset=sefl", "synth.num_conversations=4", "synth.concurrency=4", "synth.batch_size=4",
        "synth.max_new_tokens=256",
        "retry.max_attempts=1", "export.valid_fraction=0.5",
        f"train.model={model_dir}", "train.max_steps=1", "train.cpus_per_worker=1", "train.max_seq_len=2048",
        "infer.max_new_tokens=4", "judge.max_new_tokens=256", "judge.n_bootstrap=20",
    )
    assert config.serve.enabled, "jobs/local.yaml serves its own model: the path under test"
    serve.shutdown()  # a Serve left by another module would keep its own port
    try:
        with caplog.at_level(logging.INFO, logger="sefl_ray"):
            run_pipeline(config)
        assert APP_NAME not in serve.status().applications, "the app is deleted once its stage ends"
    finally:
        serve.shutdown()
    manifest = read_manifest(tmp_path / "run")
    assert all(record["status"] == "done" for record in manifest["stages"].values()), manifest["stages"]
    assert caplog.text.count(f"local Serve app up at {served}") == 2, "Serve up once for synth and gate, once for judge"
    synth, judge = manifest["stages"]["synth"], manifest["stages"]["judge"]
    assert synth["rows"] == 4 and synth["ok"] > 0 and synth["completion_tokens"] > 0, synth
    assert judge["rows"] > 0 and judge["completion_tokens"] > 0, judge  # the served model answered every stage
    assert manifest["stages"]["gate"]["completion_tokens"] > 0, manifest["stages"]["gate"]


def all_done(fingerprints: dict[str, str], artifacts: list[str]) -> dict:
    stages = {name: {"status": "done", "fingerprint": fingerprints[name], "artifacts": artifacts,
                     "run_id": f"run-{name}"} for name in STAGE_NAMES}
    for name, record in stages.items():
        record["upstream_run_id"] = f"run-{UPSTREAM[name]}" if name in UPSTREAM else None
    return {"stages": stages}


def local_config(tmp_path, *overrides: str):
    return load_config(Path(__file__).resolve().parents[1] / "jobs" / "local.yaml", [f"run_dir={tmp_path}",
                                                                                      *overrides])


def test_from_and_only_name_real_stages_and_force_them(tmp_path, caplog):
    fingerprints = stage_fingerprints(local_config(tmp_path))
    (tmp_path / "out").mkdir()
    done = all_done(fingerprints, ["out"])
    assert set(plan_stages(done, fingerprints, tmp_path).values()) == {"skip"}
    assert plan_stages(done, fingerprints, tmp_path, start="judge") == {
        **{name: "skip" for name in STAGE_NAMES[:-2]}, "judge": "forced", "report": "forced"}
    only_train = plan_stages(done, fingerprints, tmp_path, only="train")
    assert [name for name, why in only_train.items() if why != "skip"] == ["train"]
    with pytest.raises(ConfigError, match="--from jugde: no such stage"):
        plan_stages(done, fingerprints, tmp_path, start="jugde")

    done["stages"]["train"]["fingerprint"] = "something else"
    assert plan_stages(done, fingerprints, tmp_path)["train"] == "config changed"
    assert plan_stages(done, fingerprints, tmp_path)["report"] == "upstream runs"
    plan = plan_stages(done, fingerprints, tmp_path, start="judge")
    assert plan["train"] == "skip" and "stage train is stale (config changed) but comes before --from judge" in (
        caplog.text)

    (tmp_path / "out").rmdir()
    assert plan_stages(all_done(fingerprints, ["out"]), fingerprints, tmp_path)["models"] == "artifact missing: out"
    interrupted = all_done(fingerprints, [])
    interrupted["stages"]["judge"]["status"] = "running"
    assert plan_stages(interrupted, fingerprints, tmp_path)["judge"] == "last run running"


@pytest.mark.parametrize(("override", "stale"), [
    ("judge.mode=pairwise", {"judge", "report"}),
    ("judge.concurrency=3", set()),
    ("synth.concurrency=3", set()),
    ("synth.num_conversations=20", {"synth", "gate", "export", "train", "infer", "judge", "report"}),
    ("serve.app.max_batch_size=4", set()),
    ("serve.app.model=/models/other", {"synth", "gate", "export", "train", "infer", "judge", "report"}),
    ("models.prepare=[]", {"models"}),
    ("gate.dedup.threshold=0.8", {"gate", "export", "train", "infer", "judge", "report"}),
    ("gate.llm_gates=[sense]", {"gate", "export", "train", "infer", "judge", "report"}),
    ("gate.concurrency=3", set()),
    ("export.valid_fraction=0.5", {"export", "train", "infer", "judge", "report"}),
    ("train.lr=1e-3", {"train", "infer", "judge", "report"}),
    ("train.cpus_per_worker=1", set()),
    ("train.merge=false", set()),
    ("infer.max_new_tokens=10", {"infer", "judge", "report"}),
])
def test_a_changed_field_makes_its_stage_and_the_later_ones_stale(tmp_path, override, stale):
    before = stage_fingerprints(local_config(tmp_path))
    after = stage_fingerprints(local_config(tmp_path, override))
    assert {name for name in PIPELINE_NAMES if before[name] != after[name]} == stale


def test_swapping_teacher_and_student_makes_synth_stale(tmp_path):
    two = "endpoints=[{name: local, model: big-model}, {name: other, model: small-model}]"
    before = stage_fingerprints(local_config(tmp_path, two, "synth.teacher_endpoint=local",
                                             "synth.student_endpoint=other"))
    after = stage_fingerprints(local_config(tmp_path, two, "synth.teacher_endpoint=other",
                                            "synth.student_endpoint=local"))
    assert {name for name in PIPELINE_NAMES if before[name] != after[name]} == {
        "synth", "gate", "export", "train", "infer", "judge", "report"}
