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
        config = load_config(path)
        if "synth" in yaml.safe_load(path.read_text()):
            # a preset that synthesizes names the endpoints of synth and of its gate, both among its own
            for name in [*config.synth.endpoint_names("teacher"), *config.synth.endpoint_names("student"),
                         config.gate.endpoint]:
                config.endpoint(name)


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


def _config_models():
    import inspect

    import sefl_ray.config as config_package
    from sefl_ray.config.schema import StrictModel

    return [model for model in vars(config_package).values()
            if inspect.isclass(model) and issubclass(model, StrictModel) and model is not StrictModel]


def test_every_config_field_says_what_it_decides():
    """A field without a `decides` mark would land on neither side of the fingerprints: this fails instead."""
    from pydantic import Field as PydanticField

    from sefl_ray.config.schema import StrictModel, decided_by, unmarked_fields

    models = _config_models()
    assert len(models) >= 18
    assert unmarked_fields(models) == []

    class Careless(StrictModel):  # a new field written with pydantic's own Field
        knob: int = PydanticField(3)

    assert unmarked_fields([Careless]) == ["Careless.knob"]
    # and the marks are what the fingerprints read: speed knobs out, content and scope in
    config = load_config(None, ["synth.concurrency=3", "synth.num_conversations=5"])
    assert "concurrency" not in decided_by(config.synth) and decided_by(config.synth)["num_conversations"] == 5
    assert "num_conversations" not in decided_by(config.synth, ("content",))


def test_set_indexes_lists_by_position(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("endpoints:\n  - {name: a, model: m1}\n  - {name: b, model: m2}\n")
    config = load_config(path, ["endpoints.0.rpm=5", "endpoints.-1.model=m3"])
    assert [(e.name, e.rpm, e.model) for e in config.endpoints] == [("a", 5, "m1"), ("b", None, "m3")]
    with pytest.raises(ConfigError, match="'endpoints' has 2 entries; index 2 is out of range"):
        load_config(path, ["endpoints.2.rpm=5"])
    with pytest.raises(ConfigError, match="'endpoints' is a list; index it by position, e.g. endpoints.0"):
        load_config(path, ["endpoints.a.rpm=5"])
    with pytest.raises(ConfigError, match="'name' is not a section or a list"):
        load_config(path, ["endpoints.0.name.first=x"])


def test_infer_concurrency_counts_calls_across_all_callers(tmp_path):
    """The removed meaning (calls per actor, times num_actors) is refused with what to write instead, when endpoint
    mode runs; the pipeline's local-mode infer keeps num_actors as model actors."""
    from sefl_ray.infer.run import run_infer

    config = load_config(None, [f"run_dir={tmp_path}", "infer.mode=endpoint", "infer.num_actors=2",
                                "infer.concurrency=16"])
    with pytest.raises(ConfigError, match="write infer.concurrency: 32 and drop num_actors"):
        run_infer(config)
    assert not (tmp_path / "infer").exists()
    load_config(None, ["infer.mode=local", "infer.num_actors=2"]).infer.check_endpoint_callers()
    with pytest.raises(ConfigError, match="judge.judges"):
        load_config(None, ["judge.judges=[]"])


def test_serve_app_is_validated_like_every_section():
    with pytest.raises(ConfigError, match="serve.app.max_batch_sise"):
        load_config(None, ["serve.app.max_batch_sise=4"])
    with pytest.raises(ConfigError, match="serve.app.max_batch_size"):
        load_config(None, ["serve.app.max_batch_size=0"])
