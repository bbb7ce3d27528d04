"""What each call cost: tokens, latency, retries, dollars (`CallRecord`); their totals are `sefl_ray.usage.Usage`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CallRecord:
    endpoint: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    rate_wait_s: float = 0.0
    attempts: int = 0
    cost_usd: float | None = None
    status: str = "ok"
    cached: bool = False
    error: str | None = None
    errors_seen: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "retries": self.retries}


def call_cost(prompt_tokens: int, completion_tokens: int, price_in: float | None, price_out: float | None):
    if price_in is None or price_out is None:
        return None
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000
