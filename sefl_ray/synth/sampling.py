"""Controlled sampling: which passage, grade band, language and mistakes each planned conversation gets.

Without quotas a plan walks the passages (`samples_per_source` each) and draws its mistakes uniformly, as before.
With quotas (`synth.quotas`) every controlled dimension is dealt rather than drawn: the counts per value are
allocated exactly by the largest-remainder rule, then shuffled by the seed, so a plan of N conversations meets
every share to within one conversation (not the few percent independent draws would miss by). Mistake kinds are
dealt over all planned mistakes: each conversation takes the kinds with the most quota left, ties broken by the
seed, never the same kind twice while it has a choice. `sefl_ray.data.quotas.achieved` counts what a plan (or the
records made from it) holds, for the summary and the dataset card.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from sefl_ray.config import QuotaConfig, SynthConfig
from sefl_ray.data.quotas import quota_counts
from sefl_ray.errors import ConfigError

def dealt(shares: dict[Any, float], total: int, rng: random.Random) -> list[Any]:
    """`total` values in a seeded order, each value exactly as often as `quota_counts` says."""
    values = [value for value, count in sorted(quota_counts(shares, total).items(), key=lambda item: str(item[0]))
              for _ in range(count)]
    rng.shuffle(values)
    return values


def plan_slots(synth: SynthConfig, sources: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """One slot per planned conversation: its passage, sample index, and the dealt level, language and mistake
    count (None where the dimension has no quota). Mistake kinds are dealt by `deal_mistake_kinds`."""
    quotas = synth.quotas
    rng = random.Random(f"{seed}:quotas")
    if quotas.subject:
        slots = _slots_by_subject(synth, sources, rng)
    else:
        slots = [{"source": source, "sample_index": index} for source in sources
                 for index in range(synth.samples_per_source)]
        if synth.num_conversations:
            slots = slots[: synth.num_conversations]
    for dimension in ("level", "language", "num_mistakes"):
        shares = getattr(quotas, dimension)
        values = dealt(shares, len(slots), rng) if shares else [None] * len(slots)
        for slot, value in zip(slots, values):
            slot[dimension] = value
    return slots


def _slots_by_subject(synth: SynthConfig, sources: list[dict[str, Any]], rng: random.Random) -> list[dict]:
    if not synth.num_conversations:
        raise ConfigError("synth.quotas.subject deals a number of conversations: set synth.num_conversations")
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        if source.get("subject"):
            by_subject.setdefault(source["subject"], []).append(source)
    missing = sorted(set(synth.quotas.subject) - set(by_subject))
    if missing:
        raise ConfigError(f"synth.quotas.subject: no passage has subject {', '.join(missing)} (the passages' "
                          f"subjects: {', '.join(sorted(by_subject)) or 'none'}; see synth.sources.subject_column)")
    uses: Counter[str] = Counter()
    slots = []
    for subject in dealt(synth.quotas.subject, synth.num_conversations, rng):
        passages = by_subject[subject]
        turn = sum(uses[p["source_id"]] for p in passages)  # round robin over the subject's passages
        source = passages[turn % len(passages)]
        slots.append({"source": source, "sample_index": uses[source["source_id"]]})
        uses[source["source_id"]] += 1
    return slots


def deal_mistake_kinds(counts: list[int], quotas: QuotaConfig, rng: random.Random) -> list[list[str]]:
    """The kinds of each conversation's mistakes, `counts[i]` for conversation i, meeting `quotas.mistake_kinds`
    over all of them."""
    left = quota_counts(quotas.mistake_kinds, sum(counts))
    tie = {kind: rng.random() for kind in left}
    kinds_per_plan = []
    for count in counts:
        chosen: list[str] = []
        for _ in range(count):
            fresh = [kind for kind in left if kind not in chosen] or list(left)
            kind = max(fresh, key=lambda k: (left[k], tie[k]))
            chosen.append(kind)
            left[kind] -= 1
        kinds_per_plan.append(chosen)
    return kinds_per_plan
