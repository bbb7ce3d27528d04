"""A corpus with planted near-duplicates, for measuring the gate's dedup: recall and precision against the truth.

Each original is a few sentences of words drawn (Zipf-like) from a fixed vocabulary; a share of them get copies
that are exact, reworded (a few words swapped for others) or reordered (sentences shuffled). `groups` says which
rows are copies of which, so `score` can count a removal as right only when it removes a copy of its kept row.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

KINDS = ("exact", "reworded", "reordered")


@dataclass
class Corpus:
    ids: list[str]
    texts: list[str]
    group_of: dict[str, int]  # row id -> the index of the original it was made from
    kind_of: dict[str, str]   # copy id -> how it was made


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))))
    return sorted(words)


def make_corpus(rows: int, *, duplicate_share: float = 0.2, seed: int = 0, sentences: int = 5,
                reworded_words: int = 3) -> Corpus:
    """`rows` texts, about `duplicate_share` of them planted copies (kinds in turn) of an original."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng, 5000)
    weights = itertools.accumulate(1 / (rank + 10) for rank in range(len(vocabulary)))  # common words are common
    cumulative = list(weights)

    def sentence() -> str:
        return " ".join(rng.choices(vocabulary, cum_weights=cumulative, k=rng.randint(8, 16))).capitalize() + "."

    originals = max(1, round(rows * (1 - duplicate_share)))
    ids, texts, group_of, kind_of = [], [], {}, {}
    bodies: list[list[str]] = []
    for index in range(originals):
        bodies.append([sentence() for _ in range(sentences)])
        row_id = f"r{index:07d}"
        ids.append(row_id)
        texts.append(" ".join(bodies[-1]))
        group_of[row_id] = index
    for copy in range(rows - originals):
        source = rng.randrange(originals)
        kind = KINDS[copy % len(KINDS)]
        body = list(bodies[source])
        if kind == "reworded":
            words = " ".join(body).split(" ")
            for position in rng.sample(range(len(words)), min(reworded_words, len(words))):
                words[position] = rng.choice(vocabulary)
            text = " ".join(words)
        else:
            if kind == "reordered":
                while body == bodies[source] and len(body) > 1:
                    rng.shuffle(body)
            text = " ".join(body)
        row_id = f"c{copy:07d}"
        ids.append(row_id)
        texts.append(text)
        group_of[row_id] = source
        kind_of[row_id] = kind
    order = list(range(len(ids)))
    rng.shuffle(order)  # copies do not sit next to their originals
    return Corpus([ids[i] for i in order], [texts[i] for i in order], group_of, kind_of)


def score(corpus: Corpus, removed: dict[str, str]) -> dict[str, float]:
    """Precision and recall of `removed` ({removed id: kept id}) against the planted groups. A group of k rows
    should lose exactly k - 1."""
    group_sizes: dict[int, int] = {}
    for group in corpus.group_of.values():
        group_sizes[group] = group_sizes.get(group, 0) + 1
    should_remove = sum(size - 1 for size in group_sizes.values())
    right = sum(corpus.group_of[row] == corpus.group_of[kept] for row, kept in removed.items())
    return {"precision": right / len(removed) if removed else 1.0,
            "recall": right / should_remove if should_remove else 1.0,
            "removed": len(removed), "planted": should_remove}
