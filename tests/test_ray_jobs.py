"""Stages as Ray jobs on a real cluster: `ray start --head` in the test, `ray job submit --working-dir .` of synth,
gate, export and train against it, and `serve deploy` of a Serve config to it, exactly as the README tells users to.

The head runs in its own process group with its own temp dir and is killed as a group afterwards: `ray stop` would
also stop the session's local Ray (it stops every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sefl_ray.testing.ports import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster started like a user's: `ray start --head`, token auth as our cluster scripts set it.
    A head that exits while starting (a port taken between our look and its bind) is started again on fresh ports;
    the third failure shows its log."""
    for attempt in range(3):
        temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
        head, address, env = _start_head(temp_dir)
        try:
            _wait_for_dashboard(address, env["RAY_AUTH_TOKEN"], head)
            break
        except HeadExited:
            log = (Path(temp_dir) / "ray-start.log").read_text(errors="replace")
            _stop_head(head, temp_dir)
            if attempt == 2:
                pytest.fail(f"ray start --head exited three times; its last log:\n{log[-4000:]}")
        except BaseException:
            _stop_head(head, temp_dir)
            raise
    try:
        yield {"address": address, "env": env}
    finally:
        _stop_head(head, temp_dir)


class HeadExited(Exception):
    pass


def _start_head(temp_dir: str) -> tuple[subprocess.Popen, str, dict]:
    dashboard_port = free_port()
    # Every fixed default port of a head, moved to a free one: the session's own local Ray already holds some.
    ports = [f"--{name}={free_port()}" for name in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "node-manager-port", "object-manager-port")]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ADDRESS": ""}
    with open(Path(temp_dir) / "ray-start.log", "w") as log:  # the child keeps its own descriptor
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--port=0", "--num-cpus=2", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
             "--disable-usage-stats", *ports],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return head, f"http://127.0.0.1:{dashboard_port}", env


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """Kill the head's whole process group: what `ray start` spawned may outlive it."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=5)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(address: str, token: str, head: subprocess.Popen, timeout_s: float = 90) -> None:
    request = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise HeadExited
        try:
            urllib.request.urlopen(request, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Ray's job server at {address} did not come up in {timeout_s} s")


def submit(ray_head: dict, *command: str) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir . -- COMMAND`, waiting for the job to end (the CLI quotes each argument for
    the shell that runs the entrypoint). The job server answers before the head's agent has registered, and on a
    busy machine that can take a while: a submission refused for that reason is tried again."""
    deadline = time.monotonic() + 120
    while True:
        result = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", ray_head["address"], "--working-dir", ".", "--",
             *command],
            cwd=REPO, env=ray_head["env"], capture_output=True, text=True, timeout=300,
        )
        if "No available agent to submit job" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


@pytest.mark.slow
def test_synth_gate_export_and_train_as_ray_jobs(ray_head, tmp_path, tiny_model_dir):
    from sefl_ray.testing.loopback import LoopbackServer
    from sefl_ray.testing.schema_replies import grounded_schema_reply

    with LoopbackServer(replies=grounded_schema_reply) as loopback:
        overrides = [
            "--set", f"run_dir={tmp_path}",
            "--set", f"endpoints=[{{name: local, model: loop-model, base_url: '{loopback.base_url}'}}]",
            "--set", "synth.num_conversations=6", "--set", "synth.batch_size=3",
            "--set", f"train.model={tiny_model_dir}", "--set", "train.max_steps=2",
            "--set", "train.cpus_per_worker=1", "--set", "train.storage_path=" + str(tmp_path / "checkpoints"),
        ]
        for stage in ("synth", "gate", "export", "train"):  # each runs where synth wrote: as a job
            result = submit(ray_head, "sefl-ray", stage, "jobs/local.yaml", *overrides)
            assert result.returncode == 0, f"{stage}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            assert "succeeded" in result.stdout + result.stderr
        calls = len(loopback.requests)

    summary = json.loads((tmp_path / "synth" / "summary.json").read_text())
    assert (summary["ok"], summary["failed"]) == (6, 0)
    assert calls >= 6 * 3, "the job's conversations did not reach the API"
    train = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert train["finished"] and train["steps"] == 2
    assert Path(train["checkpoint"]).is_relative_to(tmp_path / "checkpoints")
    assert (tmp_path / "train" / "merged" / "config.json").exists()


@pytest.mark.slow
def test_serve_deploy_to_the_cluster(ray_head, tmp_path, tiny_model_dir):
    from openai import OpenAI

    config = yaml.safe_load((REPO / "serve_configs" / "feedback.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    [app] = config["applications"]
    app["args"].update(model=str(tiny_model_dir), autoscaling=None, num_replicas=1)
    config_path = tmp_path / "feedback.yaml"
    config_path.write_text(yaml.safe_dump(config))

    serve = [str(BIN / "serve")]
    deployed = subprocess.run([*serve, "deploy", str(config_path), "--address", ray_head["address"]],
                              env=ray_head["env"], capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    try:
        status = _wait_until_running(serve, ray_head)
        assert status["applications"]["feedback"]["status"] == "RUNNING", status
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="feedback", max_tokens=8,
                                               messages=[{"role": "user", "content": "Say hello."}])
        assert reply.choices[0].message.content is not None and reply.usage.completion_tokens >= 1
        assert [model.id for model in client.models.list().data] == ["feedback"]
    finally:
        subprocess.run([*serve, "shutdown", "--yes", "--address", ray_head["address"]], env=ray_head["env"],
                       capture_output=True, text=True, timeout=120)


def _wait_until_running(serve: list[str], ray_head: dict, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    status: dict = {}
    while time.monotonic() < deadline:
        result = subprocess.run([*serve, "status", "--address", ray_head["address"]], env=ray_head["env"],
                                capture_output=True, text=True, timeout=60)
        status = yaml.safe_load(result.stdout) or {}
        app_status = status.get("applications", {}).get("feedback", {}).get("status")
        if app_status in ("RUNNING", "DEPLOY_FAILED"):
            return status
        time.sleep(1)
    return status
