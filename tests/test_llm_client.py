"""The endpoint layer against a real loopback HTTP server: retries, backoff, failures recorded, usage, secrets."""

import asyncio
import json
import logging

import pytest

from sefl_ray.config import RetryConfig, save_resolved_config, load_config
from sefl_ray.errors import MissingSecretError
from sefl_ray.llm.client import EndpointCallFailed, EndpointClient
from sefl_ray.llm.endpoint import EndpointConfig
from sefl_ray.testing.loopback import LoopbackConfig
from sefl_ray.usage import usage_of

FAST_RETRY = RetryConfig(max_attempts=6, base_delay_s=0.01, max_delay_s=0.05)
MESSAGES = [{"role": "user", "content": "Explain photosynthesis in one sentence."}]


def endpoint_for(server, **fields):
    return EndpointConfig(**{"name": "loop", "model": "loop-model", "base_url": server.base_url, **fields})


async def call_many(client, n, concurrency=None):
    async def one(i):
        try:
            return await client.chat([{"role": "user", "content": f"question {i}"}], max_tokens=16)
        except EndpointCallFailed as failure:
            return failure

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def test_ok_call_records_usage_and_cost(loopback):
    loopback.config = LoopbackConfig(latency_s=0.02)
    client = EndpointClient(endpoint_for(loopback, price_input_per_1m=2.0, price_output_per_1m=8.0), FAST_RETRY)
    result = asyncio.run(call_many(client, 1))[0]
    record = result.record
    assert result.text.startswith("echo:")
    assert record.status == "ok" and record.attempts == 1
    assert record.prompt_tokens > 0 and record.completion_tokens > 0
    assert record.cost_usd == pytest.approx((record.prompt_tokens * 2 + record.completion_tokens * 8) / 1e6)
    assert record.latency_s >= 0.02
    assert loopback.requests[0].body["model"] == "loop-model"


def test_faults_at_20_percent_end_in_success_or_recorded_failure(loopback):
    loopback.config = LoopbackConfig(
        rate_429=0.05, retry_after_s=0.02, rate_500=0.05, rate_timeout=0.05, hang_s=1.0, rate_malformed=0.05, seed=3
    )
    retry = RetryConfig(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
    client = EndpointClient(endpoint_for(loopback, timeout_s=0.5), retry)
    results = asyncio.run(call_many(client, 200))

    assert len(results) == 200
    failed = [r for r in results if isinstance(r, EndpointCallFailed)]
    ok = [r for r in results if not isinstance(r, EndpointCallFailed)]
    assert len(ok) >= 190  # 20 % faults, 3 attempts: ~0.8 % of calls fail for good
    for failure in failed:
        assert failure.record.status == "failed" and failure.record.attempts == 3
        assert failure.record.error
    retried = [r.record for r in ok if r.record.attempts > 1]
    assert retried, "faults were injected, some calls must have been retried"
    reasons = " ".join(reason for r in retried for reason in r.errors_seen)
    for expected in ("HTTP 429", "HTTP 500", "timeout", "malformed response"):
        assert expected in reasons
    # One retry policy: the server saw no more attempts than we counted (the openai client's own retries are off);
    # only attempts that timed out or failed to connect may have never reached it (a loaded machine).
    records = [r.record for r in ok] + [f.record for f in failed]
    attempts = sum(record.attempts for record in records)
    unseen_possible = sum(1 for record in records for reason in record.errors_seen
                          if reason == "timeout" or reason.startswith("connection error"))
    assert attempts - unseen_possible <= loopback.count() <= attempts
    totals = usage_of([r.record for r in ok] + [f.record for f in failed])
    assert totals.calls == 200 and totals.failed == len(failed) and totals.unpriced_calls == 200


def test_retry_after_is_honoured(loopback):
    loopback.config = LoopbackConfig(rate_429=1.0, retry_after_s=0.3)
    client = EndpointClient(endpoint_for(loopback), RetryConfig(max_attempts=3, base_delay_s=0.001))
    failure = asyncio.run(call_many(client, 1))[0]
    assert isinstance(failure, EndpointCallFailed)
    assert failure.record.attempts == 3 and "HTTP 429" in failure.record.error
    arrivals = [r.arrived_at for r in loopback.requests]
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert len(gaps) == 2 and min(gaps) >= 0.29


def test_non_retryable_4xx_fails_at_once(loopback):
    bad_path = loopback.base_url.replace("/v1", "/no-such-api/v1")
    client = EndpointClient(EndpointConfig(name="loop", model="m", base_url=bad_path), FAST_RETRY)
    failure = asyncio.run(call_many(client, 1))[0]
    assert isinstance(failure, EndpointCallFailed)
    assert failure.record.attempts == 1 and "HTTP 404" in failure.record.error
    assert loopback.count() == 1


def test_concurrency_cap_per_client(loopback):
    loopback.config = LoopbackConfig(latency_s=0.2)
    client = EndpointClient(endpoint_for(loopback, max_concurrency=4), FAST_RETRY)
    results = asyncio.run(call_many(client, 8))
    assert all(not isinstance(r, EndpointCallFailed) for r in results)
    arrivals = sorted(r.arrived_at for r in loopback.requests)
    assert arrivals[4] - arrivals[0] >= 0.19  # the fifth call waited for a slot


def test_unset_key_is_a_clear_error(monkeypatch, loopback):
    monkeypatch.delenv("SEFL_TEST_KEY", raising=False)
    with pytest.raises(MissingSecretError, match=r"\$SEFL_TEST_KEY"):
        EndpointClient(endpoint_for(loopback, api_key_env="SEFL_TEST_KEY"))


def test_key_never_reaches_logs_or_outputs(monkeypatch, loopback, tmp_path, caplog, capfd):
    """The vendor quotes the bearer token in its error bodies: what the client keeps of them (the failed call's
    error, the reasons of its retries, its debug log) says `***` where the key was."""
    secret = "sk-sefl-test-4f9c2a7e1b"
    monkeypatch.setenv("SEFL_TEST_KEY", secret)
    loopback.config = LoopbackConfig(rate_500=0.5, echo_key_in_errors=True, seed=1)
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        config = load_config(None, [f"endpoints=[{{name: loop, base_url: '{loopback.base_url}', "
                                    "api_key_env: SEFL_TEST_KEY}]"])
        save_resolved_config(config, tmp_path)
        client = EndpointClient(config.endpoints[0], RetryConfig(max_attempts=2, base_delay_s=0.01))
        results = asyncio.run(call_many(client, 10))
        records = [r.record.to_dict() for r in results]
        (tmp_path / "records.json").write_text(json.dumps(records))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()

    # The key was really sent and really echoed, so the test would catch a leak of it.
    assert loopback.requests[0].headers.get("authorization") == f"Bearer {secret}"
    failed = [r.record for r in results if isinstance(r, EndpointCallFailed)]
    assert failed, "50 % faults and 2 attempts: some calls fail for good"
    for record in failed:
        assert "HTTP 500" in record.error and "Authorization: Bearer ***" in record.error, record.error
    reasons = [reason for record in records for reason in record["errors_seen"]]
    assert reasons and all("Bearer ***" in reason for reason in reasons)
    assert caplog.records, "debug logging was on during the calls"
    assert "Bearer ***" in caplog.text, "the failures were logged"
    assert secret not in caplog.text and secret not in "".join(capfd.readouterr())
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
