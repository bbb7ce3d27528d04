"""The one way sefl-ray calls an LLM: an async OpenAI client behind our limiter, retries and usage records."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import openai

from sefl_ray.config import RetryConfig
from sefl_ray.llm.cache import CallCache, request_key
from sefl_ray.llm.endpoint import EndpointConfig, read_api_key
from sefl_ray.llm.ratelimit import RateLimiter
from sefl_ray.llm.retry import Failure, MalformedResponse, backoff_delay_s, classify_failure
from sefl_ray.llm.usage import CallRecord, call_cost

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS_ESTIMATE = 512


@dataclass
class ChatResult:
    text: str
    finish_reason: str | None
    record: CallRecord


class EndpointCallFailed(Exception):
    """A call that failed for good (non-retryable, or out of attempts); `record` says why and what it cost."""

    def __init__(self, record: CallRecord):
        super().__init__(f"{record.endpoint}: {record.error}")
        self.record = record


class EndpointClient:
    """Calls one endpoint. One per endpoint per process: it owns the HTTP connection pool and the concurrency cap.

    `limiter` is a `RateLimiter` (one process) or the handle of the run's shared limiter actor (many Ray workers).
    """

    def __init__(
        self,
        endpoint: EndpointConfig,
        retry: RetryConfig | None = None,
        limiter: Any | None = None,
        seed: int | None = None,
        cache: CallCache | None = None,
    ):
        self.endpoint = endpoint
        self.retry = retry or RetryConfig()
        self._limiter = limiter if (endpoint.rpm or endpoint.tpm) else None
        self._api_key = read_api_key(endpoint)
        self._client = openai.AsyncOpenAI(
            base_url=endpoint.base_url, api_key=self._api_key, timeout=endpoint.timeout_s, max_retries=0
        )
        self._slots = asyncio.Semaphore(endpoint.max_concurrency)
        self._rng = random.Random(seed)
        self._cache = cache

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """One chat completion, retried per our policy. Raises `EndpointCallFailed` when it cannot succeed."""
        # a call that fails or is cached costs 0 on a priced endpoint and stays unpriced on one without a price
        record = CallRecord(endpoint=self.endpoint.name, model=self.endpoint.model, cost_usd=call_cost(
            0, 0, self.endpoint.price_input_per_1m, self.endpoint.price_output_per_1m))
        started = time.monotonic()
        identity = {"name": self.endpoint.name, "base_url": self.endpoint.base_url, "model": self.endpoint.model}
        cache_key = request_key(identity, messages, params) if self._cache else None
        if cache_key and (hit := self._cache.get(cache_key)) is not None:
            record.prompt_tokens, record.completion_tokens = hit["prompt_tokens"], hit["completion_tokens"]
            record.cached = True
            return ChatResult(text=hit["text"], finish_reason=hit["finish_reason"], record=record)
        estimated_tokens = _estimate_tokens(messages, params.get("max_tokens"))
        if self.endpoint.tpm and estimated_tokens > self.endpoint.tpm:  # would wait for ever, then be refused
            record.attempts = 1
            raise self._failed(record, Failure(
                f"the request needs about {estimated_tokens} tokens (prompt and max_tokens), more than endpoint "
                f"'{self.endpoint.name}' allows per minute (tpm {self.endpoint.tpm}): it can never be sent; shorten "
                "the prompt, lower max_tokens or raise tpm", False), started)
        async with self._slots:
            while True:
                record.attempts += 1
                record.rate_wait_s += await self._wait_for_turn(estimated_tokens)
                try:
                    completion = await self._client.chat.completions.create(
                        model=self.endpoint.model, messages=messages, **params
                    )
                    text, finish_reason = _first_choice(completion)
                except Exception as exc:  # classified below: every failure is either retried or recorded
                    failure = classify_failure(exc)
                    record.errors_seen.append(self._redact(failure.reason))
                    if not failure.retryable or record.attempts >= self.retry.max_attempts:
                        raise self._failed(record, failure, started)
                    await asyncio.sleep(backoff_delay_s(record.attempts, failure, self.retry, self._rng))
                    continue
                usage = completion.usage
                record.prompt_tokens = usage.prompt_tokens if usage else 0
                record.completion_tokens = usage.completion_tokens if usage else 0
                await self._correct_tokens(record.prompt_tokens + record.completion_tokens - estimated_tokens)
                record.cost_usd = call_cost(
                    record.prompt_tokens,
                    record.completion_tokens,
                    self.endpoint.price_input_per_1m,
                    self.endpoint.price_output_per_1m,
                )
                record.latency_s = time.monotonic() - started
                if cache_key:
                    self._cache.put(cache_key, {"text": text, "finish_reason": finish_reason,
                                                "prompt_tokens": record.prompt_tokens,
                                                "completion_tokens": record.completion_tokens})
                return ChatResult(text=text, finish_reason=finish_reason, record=record)

    async def close(self) -> None:
        await self._client.close()

    def _failed(self, record: CallRecord, failure: Failure, started: float) -> EndpointCallFailed:
        record.status = "failed"
        record.error = self._redact(failure.reason)
        record.latency_s = time.monotonic() - started
        logger.debug("call to %s failed after %d attempts: %s", record.endpoint, record.attempts, record.error)
        return EndpointCallFailed(record)

    async def _wait_for_turn(self, estimated_tokens: int) -> float:
        if self._limiter is None:
            return 0.0
        delay = await _call_limiter(self._limiter, "reserve", self.endpoint.name, estimated_tokens)
        if delay > 0:
            await asyncio.sleep(delay)
        return delay

    async def _correct_tokens(self, token_delta: int) -> None:
        if self._limiter is not None and self.endpoint.tpm and token_delta:
            await _call_limiter(self._limiter, "correct_tokens", self.endpoint.name, token_delta)

    def _redact(self, text: str) -> str:
        """Some vendors echo the key in error messages; it must not reach a row or a log."""
        return text.replace(self._api_key, "***") if self._api_key != "EMPTY" else text


async def _call_limiter(limiter: Any, method: str, *args: Any) -> Any:
    if isinstance(limiter, RateLimiter):
        return getattr(limiter, method)(*args)
    return await getattr(limiter, method).remote(*args)


def _first_choice(completion: Any) -> tuple[str, str | None]:
    choices = getattr(completion, "choices", None)
    if not choices:
        raise MalformedResponse("response has no choices")
    try:  # a 200 whose JSON has another shape: the SDK does not check it, so every access may fail
        message = choices[0].message
        content = None if message is None else message.content
        finish_reason = choices[0].finish_reason
    except (AttributeError, TypeError, IndexError, KeyError) as exc:
        raise MalformedResponse(f"not a chat completion ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, str):
        raise MalformedResponse("first choice has no message content")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as exc:  # a "\ud800" escape in the JSON: text no file or model can hold
        raise MalformedResponse(f"the reply is not valid Unicode (a lone surrogate at character {exc.start})")
    return content, finish_reason


def _estimate_tokens(messages: list[dict[str, Any]], max_tokens: int | None) -> int:
    """A rough upper estimate (4 characters a token) used to reserve TPM budget before the real count is known."""
    prompt_chars = sum(len(str(message.get("content", ""))) for message in messages)
    return prompt_chars // 4 + (max_tokens or DEFAULT_MAX_TOKENS_ESTIMATE)
