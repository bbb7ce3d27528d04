"""Quota arithmetic that synth (which deals the plan) and export (whose card reports it) share."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sefl_ray.config import QuotaConfig

DIMENSIONS = ("subject", "level", "language", "num_mistakes", "mistake_kinds")


def quota_counts(shares: dict[Any, float], total: int) -> dict[Any, int]:
    """Counts per value that add up to `total` and each lie within one of share x total (largest remainder)."""
    exact = {value: share * total for value, share in shares.items()}
    counts = {value: int(amount) for value, amount in exact.items()}
    by_remainder = sorted(exact, key=lambda value: (-(exact[value] - counts[value]), str(value)))
    for value in by_remainder[: total - sum(counts.values())]:
        counts[value] += 1
    return counts


def achieved(rows: Iterable[dict[str, Any]], quotas: QuotaConfig) -> dict[str, dict[str, Any]]:
    """Target and achieved share per value of every dimension with a quota, over `rows` (plans or records)."""
    rows = list(rows)
    report: dict[str, dict[str, Any]] = {}
    for dimension in DIMENSIONS:
        shares = getattr(quotas, dimension)
        if not shares:
            continue
        if dimension == "mistake_kinds":
            seen = Counter(kind for row in rows for kind in row.get("mistake_kinds") or [])
        elif dimension == "num_mistakes":
            seen = Counter(len(row.get("mistake_kinds") or []) for row in rows)
        else:
            seen = Counter(row.get(dimension) for row in rows)
        total = sum(seen.values())
        report[dimension] = {str(value): {"target": round(share, 4), "count": seen.get(value, 0),
                                          "achieved": round(seen.get(value, 0) / total, 4) if total else None}
                             for value, share in shares.items()}
    return report
