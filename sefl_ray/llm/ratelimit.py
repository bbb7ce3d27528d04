"""RPM/TPM limits that hold across every Ray worker of a run, not per process.

Vendors count requests and tokens per minute over the whole account, so the limit must be shared: one small Ray
actor per run owns the schedule and every client asks it for a start time before calling. The schedule is a
zero-burst GCRA (evenly spaced starts): with a sliding 60 s window on the server side, evenly spaced requests can
never exceed the limit, and a small safety margin absorbs the jitter between our clock and the server's.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import ray


LIMITER_NAME_PREFIX = "sefl-ray-limiter-"


@dataclass(frozen=True)
class Limit:
    rpm: int | None = None
    tpm: int | None = None


class RateLimiter:
    """Hands out start delays so that, per key, requests and tokens stay under their per-minute limits.

    Reservations are committed when granted: a caller told to wait 0.8 s owns that slot whether or not it is
    still waiting, so concurrent callers never race for the same slot.
    """

    def __init__(self, limits: dict[str, Limit], safety_margin: float = 0.02):
        self._limits = dict(limits)
        self._margin = 1.0 + safety_margin
        self._next_request_at: dict[str, float] = {}
        self._next_token_at: dict[str, float] = {}

    def reserve(self, key: str, tokens: int = 0) -> float:
        """Seconds the caller must wait before sending a request estimated at `tokens` tokens."""
        limit = self._limits.get(key)
        if limit is None:
            return 0.0
        now = time.monotonic()
        start = max(now, self._next_request_at.get(key, now), self._next_token_at.get(key, now))
        if limit.rpm:
            self._next_request_at[key] = start + 60.0 / limit.rpm * self._margin
        if limit.tpm:
            self._next_token_at[key] = start + tokens * 60.0 / limit.tpm * self._margin
        return start - now

    def correct_tokens(self, key: str, token_delta: int) -> None:
        """Charge (or give back) the difference between a request's estimated and actual token count."""
        limit = self._limits.get(key)
        if limit is None or not limit.tpm or key not in self._next_token_at:
            return
        self._next_token_at[key] += token_delta * 60.0 / limit.tpm * self._margin


RateLimiterActor = ray.remote(num_cpus=0)(RateLimiter)


def create_shared_rate_limiter(limits: dict[str, Limit], safety_margin: float = 0.02):
    """One limiter actor for a run; pass the handle to every worker that calls an endpoint. It is named
    (`sefl-ray-limiter-...`), so `ray list actors` shows whose it is."""
    name = f"{LIMITER_NAME_PREFIX}{uuid.uuid4().hex[:8]}"
    return RateLimiterActor.options(max_concurrency=1, name=name).remote(limits, safety_margin)
