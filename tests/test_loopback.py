"""The loopback vendor must fail the way real vendors fail, or the retry and rate-limit tests built on it prove
nothing: these tests drive it with the official openai client and check what that client sees."""

import asyncio
import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from sefl_ray.testing.loopback import (
    LoopbackConfig,
    LoopbackServer,
    _config_argv,
    _parse_args,
    start_loopback_process,
)

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def make_client(server, **kwargs):
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, api_key="sk-loopback-test", **kwargs)


def post_raw(url, data: bytes):
    """Status and parsed JSON body of a POST, for what the openai client cannot send (or hides)."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_chat_call_returns_echo_usage_and_records_the_request(server):
    completion = make_client(server).chat.completions.create(
        model="teacher-7b",
        messages=[{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello there"}],
    )

    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "teacher-7b"
    assert completion.usage.prompt_tokens == 4  # "be kind" + "hello there"
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 7
    [record] = server.requests
    assert record.path == "/v1/chat/completions"
    assert record.outcome == "ok"
    assert record.body["messages"][1]["content"] == "hello there"
    assert record.headers["authorization"] == "Bearer sk-loopback-test"


def test_list_replies_come_back_in_order_and_cycle():
    with LoopbackServer(replies=["first", "second"]) as server:
        client = make_client(server)
        contents = [client.chat.completions.create(model="m", messages=HELLO).choices[0].message.content
                    for _ in range(3)]
    assert contents == ["first", "second", "first"]


def test_faulted_requests_do_not_use_up_scripted_replies():
    with LoopbackServer(LoopbackConfig(rate_500=1.0), replies=["first", "second"]) as server:
        client = make_client(server)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=HELLO)
        server.config = LoopbackConfig()
        assert client.chat.completions.create(model="m", messages=HELLO).choices[0].message.content == "first"


def test_callable_reply_sees_the_request_body():
    seen = []

    def reply(body):
        seen.append(body)
        return f"{body['messages'][0]['content']} at temperature {body['temperature']}"

    with LoopbackServer(replies=reply) as server:
        completion = make_client(server).chat.completions.create(
            model="m", messages=[{"role": "system", "content": "student"}], temperature=0.5
        )
    assert completion.choices[0].message.content == "student at temperature 0.5"
    assert seen[0]["model"] == "m"


def test_json_response_format_gets_valid_json(server):
    completion = make_client(server).chat.completions.create(
        model="m", messages=HELLO, response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content) == {"echo": "hello there"}


def test_rate_429_raises_rate_limit_error_with_retry_after(server):
    server.config = LoopbackConfig(rate_429=1.0, retry_after_s=0.25)
    with pytest.raises(openai.RateLimitError) as raised:
        make_client(server).chat.completions.create(model="m", messages=HELLO)

    assert raised.value.response.headers["retry-after"] == "0.25"
    assert raised.value.response.headers["retry-after-ms"] == "250"
    assert raised.value.body["code"] == "rate_limit_exceeded"
    assert server.count("429") == 1
    assert server.count() == 1


def test_openai_client_retries_429_after_the_retry_after_delay(server):
    server.config = LoopbackConfig(rate_429=1.0, retry_after_s=0.2)
    with pytest.raises(openai.RateLimitError):
        make_client(server, max_retries=2).chat.completions.create(model="m", messages=HELLO)

    arrivals = [record.arrived_at for record in server.requests]
    assert len(arrivals) == 3
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert all(0.19 <= gap < 1.0 for gap in gaps), gaps
    assert server.requests[-1].headers["x-stainless-retry-count"] == "2"


def test_rate_500_raises_internal_server_error(server):
    server.config = LoopbackConfig(rate_500=1.0)
    with pytest.raises(openai.InternalServerError):
        make_client(server).chat.completions.create(model="m", messages=HELLO)
    assert server.count("500") == 1


def test_hanging_request_times_out_the_client(server):
    server.config = LoopbackConfig(rate_timeout=1.0, hang_s=5.0)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        make_client(server, timeout=0.3).chat.completions.create(model="m", messages=HELLO)
    assert time.monotonic() - started < 3.0
    assert server.count("timeout") == 1


def test_malformed_body_raises_json_decode_error_and_is_not_retried(server):
    server.config = LoopbackConfig(rate_malformed=1.0)
    # openai does not wrap a non-JSON 200 body: the stdlib's JSONDecodeError escapes, and no retry happens.
    with pytest.raises(json.JSONDecodeError):
        make_client(server, max_retries=2).chat.completions.create(model="m", messages=HELLO)
    assert server.count("malformed") == 1
    assert server.count() == 1


def test_rpm_limit_rejects_the_sixth_call_and_is_never_exceeded(server):
    server.config = LoopbackConfig(rpm_limit=5)
    client = make_client(server)
    for _ in range(5):
        client.chat.completions.create(model="m", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="m", messages=HELLO)

    retry_after_s = float(raised.value.response.headers["retry-after"])
    assert 55.0 < retry_after_s <= 60.0  # the first call leaves the 60 s window about a minute from now
    assert server.rate_limited_count == 1
    assert server.count("ok") == 5
    assert server.max_in_window() == 5


def test_retry_after_from_the_rpm_window_is_long_enough_for_a_retrying_client(server):
    server.config = LoopbackConfig(rpm_limit=2, rpm_window_s=0.3)
    client = make_client(server, max_retries=5)
    for _ in range(6):
        client.chat.completions.create(model="m", messages=HELLO)

    assert server.count("ok") == 6
    assert server.rate_limited_count >= 1
    assert server.max_in_window(0.3) == 2  # the limit held in every 0.3 s window
    assert server.max_in_window(10.0) == 6
    assert server.max_in_window(10.0, outcomes=("rate_limited",)) == server.rate_limited_count


def test_reset_clears_records_and_the_rpm_window(server):
    server.config = LoopbackConfig(rpm_limit=1)
    client = make_client(server)
    client.chat.completions.create(model="m", messages=HELLO)
    server.reset()
    assert server.count() == 0
    client.chat.completions.create(model="m", messages=HELLO)  # would be rate limited without the reset
    assert server.count("ok") == 1


def test_faults_follow_the_seed():
    outcomes = []
    for _ in range(2):
        with LoopbackServer(LoopbackConfig(rate_429=0.3, rate_500=0.3, seed=7)) as server:
            client = make_client(server)
            for _ in range(20):
                try:
                    client.chat.completions.create(model="m", messages=HELLO)
                except openai.APIStatusError:
                    pass
            outcomes.append([record.outcome for record in server.requests])
    assert outcomes[0] == outcomes[1]
    assert {"ok", "429", "500"} <= set(outcomes[0])


def test_streaming_sends_the_reply_in_chunks_with_usage_last(server):
    stream = make_client(server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "echo: one two three"
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) == 4
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 4
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_models_lists_the_configured_model():
    with LoopbackServer(LoopbackConfig(model="judge-x")) as server:
        models = make_client(server).models.list()
    assert [model.id for model in models.data] == ["judge-x"]


def test_legacy_completions_return_text(server):
    completion = make_client(server).completions.create(model="m", prompt="complete me")
    assert completion.choices[0].text == "echo: complete me"
    assert completion.usage.prompt_tokens == 2


def test_unknown_path_and_bad_json_get_openai_style_errors(server):
    status, body = post_raw(server.base_url + "/no/such/thing", b"{}")
    assert status == 404
    assert body["error"]["message"] == "Invalid URL (POST /v1/no/such/thing)"

    status, body = post_raw(server.base_url + "/chat/completions", b"{not json")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert [record.outcome for record in server.requests] == ["not_found", "bad_request"]


def test_echo_key_in_errors_quotes_the_bearer_token_in_every_error_body(server):
    key = "sk-loopback-echo-5e1d"
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
    server.config = LoopbackConfig(rate_500=1.0)
    with pytest.raises(openai.InternalServerError) as quiet:
        client.chat.completions.create(model="m", messages=HELLO)
    assert key not in str(quiet.value), "off by default"

    server.config = LoopbackConfig(rate_500=1.0, echo_key_in_errors=True)
    with pytest.raises(openai.InternalServerError) as echoed:
        client.chat.completions.create(model="m", messages=HELLO)
    assert f"Authorization: Bearer {key}" in echoed.value.message  # what the openai client puts in its error
    server.config = LoopbackConfig(rate_429=1.0, echo_key_in_errors=True)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="m", messages=HELLO)
    assert key in limited.value.message
    request = urllib.request.Request(server.base_url + "/no/such/thing", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {key}"})
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=5)
    assert missing.value.code == 404 and key in json.loads(missing.value.read())["error"]["message"]


def test_concurrent_requests_overlap_instead_of_queueing(server):
    server.config = LoopbackConfig(latency_s=0.2)

    async def call_many(count):
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="sk", max_retries=0) as client:
            calls = [client.chat.completions.create(model="m", messages=HELLO) for _ in range(count)]
            return await asyncio.gather(*calls)

    started = time.monotonic()
    completions = asyncio.run(call_many(64))
    assert len(completions) == 64
    assert time.monotonic() - started < 3.0  # 64 serial calls would take 12.8 s
    assert server.count("ok") == 64


def test_config_flags_round_trip():
    config = LoopbackConfig(latency_s=0.05, rate_429=0.1, rpm_limit=30, seed=3, model="bench")
    assert _parse_args([*_config_argv(config), "--port", "1234"]) == (config, "127.0.0.1", 1234)
    echoing = LoopbackConfig(echo_key_in_errors=True)
    assert _parse_args(_config_argv(echoing))[0] == echoing


def test_config_rejects_impossible_fault_rates():
    with pytest.raises(ValueError, match="add up"):
        LoopbackConfig(rate_429=0.7, rate_500=0.7)


def test_subprocess_mode_answers_and_terminates_cleanly():
    process, base_url = start_loopback_process(LoopbackConfig(model="bench", latency_s=0.01))
    try:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        client = openai.OpenAI(base_url=base_url, api_key="sk", max_retries=0)
        assert client.chat.completions.create(model="x", messages=HELLO).choices[0].message.content == (
            "echo: hello there"
        )
        assert [model.id for model in client.models.list().data] == ["bench"]
    finally:
        process.terminate()
        returncode = process.wait(timeout=10)
    assert returncode == 0


def test_start_reports_a_port_already_in_use(server):
    with pytest.raises(OSError):
        LoopbackServer(port=server.port).start()
