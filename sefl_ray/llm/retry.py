"""Our one retry policy: which failures are worth another try, and how long to wait before it.

The `openai` client would retry by itself (twice, by default); clients built here turn that off so that every
attempt passes through our rate limiter and is counted in the call's usage record.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import openai

from sefl_ray.config import RetryConfig

RETRYABLE_STATUS = {408, 409, 425, 429}


@dataclass(frozen=True)
class Failure:
    reason: str
    retryable: bool
    retry_after_s: float | None = None


class MalformedResponse(Exception):
    """The server answered 200 with something that is not a usable chat completion."""


def classify_failure(exc: BaseException) -> Failure:
    if isinstance(exc, openai.APITimeoutError):
        return Failure("timeout", True)
    if isinstance(exc, openai.APIConnectionError):
        return Failure(f"connection error: {exc}", True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _short(str(getattr(exc, "message", exc)))
        if status in RETRYABLE_STATUS or status >= 500:
            return Failure(f"HTTP {status}: {message}", True, _retry_after_s(exc.response.headers))
        return Failure(f"HTTP {status}: {message}", False)
    if isinstance(exc, (openai.APIResponseValidationError, MalformedResponse, json.JSONDecodeError)):
        return Failure(f"malformed response: {_short(str(exc))}", True)
    return Failure(f"{type(exc).__name__}: {_short(str(exc))}", False)


def backoff_delay_s(attempt: int, failure: Failure, policy: RetryConfig, rng: random.Random) -> float:
    """Full-jitter exponential backoff; a server's Retry-After (capped) is a floor, not a suggestion."""
    exponential = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    delay = rng.uniform(0.5 * exponential, exponential)
    if failure.retry_after_s is not None:
        delay = min(failure.retry_after_s, policy.max_retry_after_s) * rng.uniform(1.0, 1.1)
    return delay


def _retry_after_s(headers) -> float | None:
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            continue
    return None


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
