"""What each call cost: tokens, latency, retries, dollars. Kept per call so stages can total it per role and model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable


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


def summarize_calls(records: Iterable[CallRecord | dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Totals per endpoint: calls ok/failed, tokens, retries, cost (None when any price is unknown)."""
    totals: dict[str, dict[str, Any]] = {}
    for record in records:
        row = record.to_dict() if isinstance(record, CallRecord) else record
        total = totals.setdefault(
            row["endpoint"],
            {"model": row["model"], "calls": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0,
             "retries": 0, "latency_s": 0.0, "cost_usd": 0.0},
        )
        total["calls"] += 1
        total["failed"] += row["status"] != "ok"
        total["prompt_tokens"] += row["prompt_tokens"]
        total["completion_tokens"] += row["completion_tokens"]
        total["retries"] += max(0, row["attempts"] - 1)
        total["latency_s"] += row["latency_s"]
        if total["cost_usd"] is not None:
            total["cost_usd"] = None if row["cost_usd"] is None else total["cost_usd"] + row["cost_usd"]
    return totals
