"""Secrets in a config (values of `ray.runtime_env.env_vars`, credentials inside a `base_url`) reach no file of
the run dir and no log line: a real synth, export and pipeline run, then a grep of every byte they left."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sefl_ray.config import load_config
from sefl_ray.errors import SeflError
from sefl_ray.llm.check import run_endpoint_check
from sefl_ray.pipeline import run_pipeline
from sefl_ray.synth.run import run_synth
from sefl_ray.testing.loopback import LoopbackServer
from sefl_ray.testing.ports import free_port
from sefl_ray.testing.schema_replies import schema_reply

ENV_SECRET = "hf_env_value_7f3a9c"
URL_PASSWORD = "pa55-in-the-url-41d2"


def secret_config(tmp_path: Path, base_url: str):
    with_credentials = base_url.replace("http://", f"http://svc-user:{URL_PASSWORD}@")
    return load_config(None, [
        f"run_dir={tmp_path / 'run'}",
        f"endpoints=[{{name: loop, model: loop-model, base_url: '{with_credentials}'}}]",
        "synth.teacher_endpoint=loop", "synth.student_endpoint=loop", "synth.num_conversations=3",
        "gate.endpoint=loop", "export.include_filtered=true",  # placeholder replies: whatever the gates rule
        f"ray.runtime_env={{env_vars: {{HF_TOKEN: {ENV_SECRET}, WANDB_API_KEY: {ENV_SECRET}}}}}",
    ])


def files_holding(folder: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(folder)}: {secret}" for secret in secrets if secret.encode() in data]
    return found


def test_no_secret_reaches_the_run_dir_or_the_logs(ray_session, tmp_path, caplog, capfd):
    with LoopbackServer(replies=schema_reply) as server, caplog.at_level(logging.DEBUG, logger="sefl_ray"):
        config = secret_config(tmp_path, server.base_url)
        run_synth(config)
        run_pipeline(config, only="gate")  # the gate asks the endpoint with credentials in its URL too
        run_pipeline(config, only="export")  # the manifest, the resolved config and the dataset card
        assert server.count() > 0, "the endpoint with credentials in its URL was really called"
    run_dir = tmp_path / "run"
    assert (run_dir / "manifest.json").is_file() and (run_dir / "export" / "README.md").is_file()
    assert files_holding(run_dir, [ENV_SECRET, URL_PASSWORD]) == []
    logged = caplog.text + "".join(capfd.readouterr())
    assert ENV_SECRET not in logged and URL_PASSWORD not in logged
    # what is kept says that there was a value, and where: a reader can still tell the config apart
    saved = (run_dir / "config.yaml").read_text()
    assert "HF_TOKEN: '***'" in saved and "http://***@127.0.0.1" in saved


def test_an_unreachable_endpoint_is_named_without_its_credentials(tmp_path):
    config = secret_config(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    config.retry.base_delay_s = 0.01
    with pytest.raises(SeflError) as failure:
        run_endpoint_check(config)
    assert "loop (http://***@127.0.0.1:" in str(failure.value) and URL_PASSWORD not in str(failure.value)
