"""Who sees what: the study's items, each annotator's queue of slots, and the A/B order of every slot.

- An item is one source item and one pair of systems, with the judge stage's id `item::system_a::system_b`
  (system names sorted), so human and judge ratings meet on the same ids. `num_items` draws a seeded sample.
- Overlap k of m annotators: the i-th item (in the study's seeded order) goes to annotators i, i+1, ..., i+k-1
  (mod m), so every item has k raters and every annotator about N*k/m items. Queues keep the study's order.
- The A/B order of a slot is seeded per (seed, annotator, item): a sha256 of the three, so it is reproducible and
  independent of everything else. `AB` shows system_a as A; `BA` shows system_b as A.
- `repeats` items of each queue come back later (at least 3 slots after, where the queue allows) in the other
  order; gold items are added to every queue at seeded positions.
- A slot has its own random id: the only handle an annotator's page holds on an item, so no URL or response
  names a system, and a slot of someone else's queue is recognisably not yours (403).
"""

from __future__ import annotations

import hashlib
import random
import secrets
from itertools import combinations
from typing import Any

from sefl_ray.errors import ConfigError

REPEAT_GAP = 3


def plan_items(systems: dict[str, dict[str, Any]], *, num_items: int | None, seed: int,
               exclude: set[str] = frozenset()) -> list[tuple[str, str, str, str]]:
    """(study item id, source item, system_a, system_b) in the study's seeded order."""
    names = sorted(systems)
    items = []
    for system_a, system_b in combinations(names, 2):
        for source in sorted(set(systems[system_a]) & set(systems[system_b])):
            item_id = f"{source}::{system_a}::{system_b}"
            if item_id not in exclude:
                items.append((item_id, source, system_a, system_b))
    if not items:
        raise ConfigError(f"annotate: the systems {', '.join(names)} share no item id")
    rng = random.Random(f"{seed}:items")
    rng.shuffle(items)
    return items[:num_items] if num_items else items


def shown_order(seed: int, annotator: str, item_id: str) -> str:
    digest = hashlib.sha256(f"{seed}\x00{annotator}\x00{item_id}".encode()).digest()
    return "AB" if digest[0] % 2 == 0 else "BA"


def plan_slots(item_ids: list[str], annotators: list[str], *, overlap: int, repeats: int, gold_ids: list[str],
               seed: int) -> list[dict[str, Any]]:
    """Every annotator's queue: {slot_id, annotator, position (1-based), item_id, shown_order, kind}."""
    if overlap > len(annotators):
        raise ConfigError(f"annotate.overlap is {overlap} but there are {len(annotators)} annotators; lower the "
                          "overlap or add annotators")
    queues: dict[str, list[tuple[str, str, str]]] = {name: [] for name in annotators}
    for index, item_id in enumerate(item_ids):
        for offset in range(overlap):
            name = annotators[(index + offset) % len(annotators)]
            queues[name].append((item_id, shown_order(seed, name, item_id), "regular"))
    slots = []
    for name, queue in queues.items():
        rng = random.Random(f"{seed}:{name}:queue")
        for original in sorted(rng.sample(range(len(queue)), min(repeats, len(queue))), reverse=True):
            item_id, order, _ = queue[original]
            at = rng.randint(min(original + 1 + REPEAT_GAP, len(queue)), len(queue))
            queue.insert(at, (item_id, "BA" if order == "AB" else "AB", "repeat"))
        for item_id in gold_ids:
            queue.insert(rng.randint(0, len(queue)), (item_id, shown_order(seed, name, item_id), "gold"))
        slots += [{"slot_id": secrets.token_urlsafe(9), "annotator": name, "position": position,
                   "item_id": item_id, "shown_order": order, "kind": kind}
                  for position, (item_id, order, kind) in enumerate(queue, 1)]
    return slots
