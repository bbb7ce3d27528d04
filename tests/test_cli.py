"""The CLI as a user meets it: a real subprocess, one line on stderr and exit 2 for every mistake a user can make."""

import subprocess
import sys
from pathlib import Path

import pytest

SEFL_RAY = str(Path(sys.executable).parent / "sefl-ray")


def run_cli(*args, env=None, cwd=None):
    return subprocess.run([SEFL_RAY, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_the_stages():
    result = run_cli("--help")
    assert result.returncode == 0
    for stage in ("pipeline", "endpoints", "models"):
        assert stage in result.stdout
    assert run_cli("pipeline", "--help").returncode == 0


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ray:\n  num_cpu: 2\n")
    assert_one_line_error(run_cli("pipeline", str(path)), "unknown key 'ray.num_cpu'")
    assert_one_line_error(run_cli("pipeline", str(path), "--set", "ray.num_cpu=3"), "ray.num_cpu")


@pytest.mark.parametrize("command", ["pipeline", "endpoints"])
def test_unset_api_key_variable(tmp_path, command):
    path = tmp_path / "vendor.yaml"
    path.write_text(
        "endpoints:\n  - {name: vendor, model: gpt-x, base_url: 'http://127.0.0.1:9/v1', "
        "api_key_env: SEFL_TEST_UNSET_KEY}\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "SEFL_TEST_UNSET_KEY"}
    assert_one_line_error(run_cli(command, str(path), env=env), "$SEFL_TEST_UNSET_KEY", "not set")


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "pipeline", str(tmp_path / "missing.yaml"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_endpoint_check_against_loopback(loopback, tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(f"endpoints:\n  - {{name: loop, model: m, base_url: '{loopback.base_url}'}}\n")
    result = run_cli("endpoints", str(path))
    assert result.returncode == 0, result.stderr
    assert "loop" in result.stdout and "ok" in result.stdout
    assert loopback.count() == 1

    dead = tmp_path / "dead.yaml"
    dead.write_text("endpoints:\n  - {name: dead, model: m, base_url: 'http://127.0.0.1:9/v1', timeout_s: 2}\n")
    result = run_cli("endpoints", str(dead), "--set", "retry.base_delay_s=0.01")
    assert_one_line_error(result, "dead", "connection error")


def test_synth_export_train_push_from_the_command_line(tmp_path, tiny_model_dir):
    """A user's path: synth against an endpoint, gate and export the dataset, train on it, dry-run the push; each stage
    starts its own local Ray, and the console shows our progress, not Ray's complaints about a missing dashboard."""
    import datasets

    from sefl_ray.testing.loopback import LoopbackServer
    from sefl_ray.testing.schema_replies import schema_reply

    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    with LoopbackServer(replies=schema_reply) as server:
        config = tmp_path / "job.yaml"
        config.write_text(
            f"run_dir: {tmp_path / 'run'}\nray: {{num_cpus: 2}}\n"
            f"endpoints:\n  - {{name: loop, model: m, base_url: '{server.base_url}'}}\n"
            "synth: {teacher_endpoint: loop, student_endpoint: loop, num_conversations: 12}\n"
            "gate: {enabled: false}  # the scripted replies are the same placeholder text in every record\n"
        )
        synth = run_cli("synth", str(config), env=env)
        assert synth.returncode == 0, synth.stderr[-2000:]
    gate = run_cli("gate", str(config), env=env)
    assert gate.returncode == 0, gate.stderr[-2000:]
    export = run_cli("export", str(config))
    assert export.returncode == 0, export.stderr[-2000:]
    dataset = datasets.load_from_disk(str(tmp_path / "run/export/hf"))
    assert sorted(dataset) == ["train", "valid"]
    assert sum(len(split) for split in dataset.values()) == 12
    train = run_cli("train", str(config), "--set", f"train.model={tiny_model_dir}", "--set", "train.max_steps=3",
                    "--set", "train.merge=false", env=env)
    assert train.returncode == 0, train.stderr[-2000:]
    steps = [line for line in (tmp_path / "run/train/metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(steps) == 3
    assert "Failed to query" not in train.stderr and "State API" not in train.stderr, train.stderr[-2000:]
    push = run_cli("push", str(tmp_path / "run/export"), "--repo", "me/sefl-test", "--dry-run")
    assert push.returncode == 0, push.stderr
    assert "README.md" in push.stdout and "dry run" in push.stdout


def test_a_relative_run_dir_inside_a_ray_job_is_flagged(tmp_path):
    """Inside `ray job submit --working-dir .` the driver runs in a temporary copy: Ray says so through
    RAY_JOB_CONFIG_JSON_ENV_VAR, and a relative run_dir gets a warning naming where outputs would go."""
    import json
    import os

    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}}
    env = {**os.environ, "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)}
    repo_config = str(Path(__file__).resolve().parents[1] / "jobs" / "local.yaml")
    result = run_cli("export", repo_config, env=env, cwd=tmp_path)
    assert "run_dir 'runs/local' is relative and this Ray job runs in a temporary copy" in result.stderr
    assert str(tmp_path / "runs" / "local") in result.stderr
    assert result.returncode == 2 and "sefl-ray export: error:" in result.stderr  # nothing synthesized there
    absolute = run_cli("export", repo_config, "--set", f"run_dir={tmp_path / 'abs'}", env=env, cwd=tmp_path)
    assert "is relative" not in absolute.stderr
