from pathlib import Path

import pytest
import yaml

from sefl_ray.config import config_fingerprint, load_config, save_resolved_config
from sefl_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_every_job_yaml_loads():
    job_files = sorted((REPO / "jobs").glob("*.yaml"))
    assert job_files, "jobs/ holds at least the local preset"
    for path in job_files:
        load_config(path)


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ray:\n  num_cpus: 1\n")
    config = load_config(path, ["ray.num_cpus=3", "retry.base_delay_s=0.25", "endpoints=[{name: a, rpm: 60}]"])
    assert config.ray.num_cpus == 3
    assert config.retry.base_delay_s == 0.25
    assert config.endpoint("a").rpm == 60


@pytest.mark.parametrize(
    "text, message",
    [
        ("ray:\n  num_cpu: 2\n", "unknown key 'ray.num_cpu'"),
        ("ray:\n  num_cpus: many\n", "ray.num_cpus"),
        ("ray: [1, 2\n", "malformed YAML at line"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("endpoints:\n  - {name: a, rpm: -1}\n", "endpoints.0.rpm"),
        ("run_dir: s3://bucket/run\n", "run_dir: Value error, 's3://bucket/run' is a URI"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(path)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["ray.num_cpus"])
    with pytest.raises(ConfigError, match="unknown key 'ray.nope'"):
        load_config(None, ["ray.nope=1"])


def test_saved_config_round_trips_and_fingerprint_tracks_changes(tmp_path):
    config = load_config(None, ["seed=7", "endpoints=[{name: vendor, api_key_env: VENDOR_KEY}]"])
    saved = save_resolved_config(config, tmp_path)
    assert load_config(saved) == config
    assert yaml.safe_load(saved.read_text())["endpoints"][0]["api_key_env"] == "VENDOR_KEY"
    assert config_fingerprint(config) == config_fingerprint(load_config(saved))
    assert config_fingerprint(config) != config_fingerprint(load_config(None, ["seed=8"]))


def test_unknown_endpoint_name():
    config = load_config(None, ["endpoints=[{name: a}]"])
    with pytest.raises(ConfigError, match="no endpoint named 'b'.*known: a"):
        config.endpoint("b")
