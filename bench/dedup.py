"""The gate's near-duplicate removal at scale: rows/s at 10k, 30k and 100k rows, how time grows with rows, and the
recall and precision on a corpus with planted duplicates (exact copies, reworded ones, reordered ones).

It runs what the gate runs, `sefl_ray.gate.dedup.find_duplicates` on a local Ray (signatures on Ray Data, the LSH
index on the driver), over texts as long as a record's assignment and feedback (8 sentences, about 650 characters).
Goal on this machine: 100k rows in under 60 s, recall and precision >= 0.95. The growth exponent is the slope of
log(time) over log(rows) between the smallest and largest size: 1.0 is linear.

Usage: python bench/dedup.py [--rows 10000 30000 100000] [--sentences 8] [--no-ray]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--no-ray", action="store_true", help="signatures in this process instead of on Ray Data")
    args = parser.parse_args()

    import ray

    from sefl_ray.config import DedupConfig
    from sefl_ray.gate.dedup import find_duplicates
    from sefl_ray.testing.near_duplicates import make_corpus, score

    if not args.no_ray:
        ray.init(include_dashboard=False, log_to_driver=False)
        find_duplicates([f"w{i}" for i in range(64)], ["warm up the workers"] * 64, DedupConfig())
    settings = DedupConfig()
    rows = []
    for count in args.rows:
        corpus = make_corpus(count, duplicate_share=0.2, seed=count, sentences=args.sentences)
        started = time.perf_counter()
        removed = find_duplicates(corpus.ids, corpus.texts, settings, use_ray=not args.no_ray)
        seconds = time.perf_counter() - started
        quality = score(corpus, {row: duplicate.kept_id for row, duplicate in removed.items()})
        rows.append({"rows": count, "chars_per_row": round(sum(map(len, corpus.texts)) / count), "seconds": seconds,
                     "rows_per_s": count / seconds, **quality})
        print(f"  {count} rows: {seconds:.1f} s", flush=True)
    if not args.no_ray:
        ray.shutdown()
    first, last = rows[0], rows[-1]
    growth = (math.log(last["seconds"] / first["seconds"]) / math.log(last["rows"] / first["rows"])
              if len(rows) > 1 else None)
    print_table(rows, ["rows", "chars_per_row", "seconds", "rows_per_s", "precision", "recall", "removed",
                       "planted"])
    if growth is not None:
        print(f"\ntime grows as rows^{growth:.2f} from {first['rows']} to {last['rows']} rows")
    largest = next((row for row in rows if row["rows"] == 100_000), None)
    if largest:
        print(f"100k rows in {largest['seconds']:.1f} s (goal < 60 s)")
    path = write_results("dedup", rows, threshold=settings.threshold, num_perm=settings.num_perm,
                         shingle_chars=settings.shingle_chars, ray=not args.no_ray, growth_exponent=growth)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
