"""Near-duplicate records: MinHash signatures of character shingles, LSH bands for candidates, clusters kept once.

Why these parts: datasketch (maintained, pure Python over numpy) gives the MinHash and the banded LSH index, so no
hashing scheme of our own; signatures are computed on Ray Data, a batch of records per task, because hashing
shingles is the cost that grows with rows (the index takes a few seconds per 100k rows on the driver). Character
shingles of normalized text (lower case, words joined by one space) survive rewording a few words and reordering
sentences, which word shingles do not. Candidates an LSH band pairs are confirmed by their estimated Jaccard
similarity, clusters are the connected pairs, and each cluster keeps its smallest record id: the same records give
the same survivors, whatever order they were read in.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from sefl_ray.config.gate import DedupConfig

_WORD = re.compile(r"\w+", re.UNICODE)
SEED = 1  # MinHash permutations; fixed, so that signatures made in any process or run compare
SCHEME = "affine32"  # datasketch 2's default permutations: collision-free, stored as uint32


@dataclass(frozen=True)
class Duplicate:
    kept_id: str       # the cluster's survivor
    similarity: float  # estimated Jaccard similarity to it


def record_text(record: dict[str, Any], fields: list[str]) -> str:
    return "\n".join(str(record.get(field) or "") for field in fields)


def shingles(text: str, size: int) -> list[bytes]:
    normalized = " ".join(_WORD.findall(text.lower()))
    if len(normalized) <= size:
        return [normalized.encode()]
    return list({normalized[start:start + size].encode() for start in range(len(normalized) - size + 1)})


def _crc32(data: bytes) -> int:
    """A stable 32-bit hash in C: datasketch's default (SHA-1 in Python) is what made hashing the bottleneck."""
    return zlib.crc32(data)


def signatures(texts: list[str], settings: DedupConfig) -> np.ndarray:
    """One MinHash signature per text, as rows of a (len(texts), num_perm) uint32 array."""
    from datasketch import MinHash

    template = MinHash(num_perm=settings.num_perm, seed=SEED, hashfunc=_crc32, scheme=SCHEME)
    rows = np.empty((len(texts), settings.num_perm), dtype=np.uint32)
    for index, text in enumerate(texts):
        minhash = template.copy()
        minhash.update_batch(shingles(text, settings.shingle_chars))
        rows[index] = minhash.hashvalues
    return rows


def signature_batch(batch: dict[str, np.ndarray], settings: DedupConfig) -> dict[str, np.ndarray]:
    """Ray Data's map_batches step: a batch of (id, text) rows -> (id, signature) rows."""
    return {"id": batch["id"], "signature": signatures([str(text) for text in batch["text"]], settings)}


def find_duplicates(ids: list[str], texts: list[str], settings: DedupConfig,
                    *, use_ray: bool = True) -> dict[str, Duplicate]:
    """{id of a record to drop: its cluster's survivor}, for every record that has a near-duplicate."""
    if len(ids) < 2:
        return {}
    ids, signature_rows = _signatures_in_order(ids, texts, settings, use_ray)
    return _clusters(ids, signature_rows, settings)


def _signatures_in_order(ids: list[str], texts: list[str], settings: DedupConfig,
                         use_ray: bool) -> tuple[list[str], np.ndarray]:
    if not use_ray:
        return ids, signatures(texts, settings)
    import ray

    dataset = ray.data.from_items([{"id": row_id, "text": text} for row_id, text in zip(ids, texts)])
    computed = dataset.map_batches(signature_batch, fn_kwargs={"settings": settings}, batch_size=2048,
                                   batch_format="numpy").to_pandas()
    return [str(row_id) for row_id in computed["id"]], np.stack(computed["signature"].to_numpy())


def _clusters(ids: list[str], signature_rows: np.ndarray, settings: DedupConfig) -> dict[str, Duplicate]:
    from datasketch import LeanMinHash, MinHashLSH

    index = MinHashLSH(threshold=settings.threshold, num_perm=settings.num_perm)
    for row, row_id in enumerate(ids):
        index.insert(row, LeanMinHash(seed=SEED, hashvalues=signature_rows[row], scheme=SCHEME),
                     check_duplication=False)
    parent = list(range(len(ids)))

    def root(row: int) -> int:
        while parent[row] != row:
            parent[row] = parent[parent[row]]
            row = parent[row]
        return row

    for row in range(len(ids)):
        for other in index.query(LeanMinHash(seed=SEED, hashvalues=signature_rows[row], scheme=SCHEME)):
            if other > row and _similarity(signature_rows, row, other) >= settings.threshold:
                parent[root(other)] = root(row)
    members: dict[int, list[int]] = {}
    for row in range(len(ids)):
        members.setdefault(root(row), []).append(row)
    duplicates: dict[str, Duplicate] = {}
    for cluster in members.values():
        if len(cluster) < 2:
            continue
        kept = min(cluster, key=lambda row: ids[row])
        for row in cluster:
            if row != kept:
                duplicates[ids[row]] = Duplicate(ids[kept], round(_similarity(signature_rows, row, kept), 3))
    return duplicates


def _similarity(signature_rows: np.ndarray, first: int, second: int) -> float:
    return float(np.mean(signature_rows[first] == signature_rows[second]))
