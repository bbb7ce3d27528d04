"""`Usage`: calls, tokens and dollars, the one record every summary, card, manifest and report shows.

One rule for an unknown price: `cost_usd` sums the known costs only, and `unpriced_calls` counts the calls without
a price, so a mix of priced and unpriced endpoints is never a silent 0 or a None that hides the priced half. This
module imports nothing of sefl-ray's: the endpoint layer, the progress line and every stage use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class Usage:
    """Calls, tokens and dollars of a stage (or a role, an endpoint): the one record every summary, card, manifest
    and report shows. One rule for an unknown price: `cost_usd` sums the known costs only, and `unpriced_calls`
    counts the calls without a price, so a mix of priced and unpriced endpoints is never a silent 0 or a None."""

    calls: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_calls(self, *, prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float | None, calls: int = 1,
                  failed: int = 0, retries: int = 0) -> Usage:
        """Count `calls` calls; `cost_usd` None: their endpoint has no price."""
        self.calls += calls
        self.failed += failed
        self.retries += retries
        self.prompt_tokens += prompt_tokens or 0
        self.completion_tokens += completion_tokens or 0
        if cost_usd is None:
            self.unpriced_calls += calls
        else:
            self.cost_usd += cost_usd
        return self

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{name: getattr(self, name) + getattr(other, name) for name in USAGE_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in USAGE_FIELDS}, "cost_usd": round(self.cost_usd, 6),
                "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(**{name: data.get(name) or 0 for name in USAGE_FIELDS})

    def cost_text(self) -> str:
        """'$0.0123', '$0.0123 + 4 unpriced calls', or 'unpriced' when no call had a price."""
        if self.calls and self.unpriced_calls == self.calls:
            return "unpriced"
        text = f"${self.cost_usd:.4f}"
        return f"{text} + {self.unpriced_calls} unpriced call{'s' * (self.unpriced_calls != 1)}" if (
            self.unpriced_calls) else text


USAGE_FIELDS = ("calls", "failed", "retries", "prompt_tokens", "completion_tokens", "cost_usd", "unpriced_calls")


def usage_of(records: Iterable[Any]) -> Usage:
    """One Usage over call records (a failed call's tokens are 0, its cost 0 or unpriced as its endpoint)."""
    return usage_of_rows(record.to_dict() for record in records)


def usage_of_rows(rows: Iterable[dict[str, Any]]) -> Usage:
    """One Usage over output rows that hold one call each: prompt_tokens, completion_tokens, cost_usd, status
    (and attempts, where a row keeps them)."""
    usage = Usage()
    for row in rows:
        usage.add_calls(prompt_tokens=row.get("prompt_tokens") or 0, completion_tokens=row.get("completion_tokens") or 0,
                        cost_usd=row.get("cost_usd"), failed=int(row.get("status") != "ok"),
                        retries=max(0, (row.get("attempts") or 1) - 1))
    return usage
