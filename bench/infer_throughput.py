"""Rows/s of `run_infer` in endpoint mode at concurrency 1, 16 and 64 against a loopback model with fixed latency,
beside the ideal (C / latency).

The loopback server runs in its own process and echoes each prompt after `--latency-s`, so every row is one call.
Each level runs enough rows to keep C calls in flight for about `--seconds` seconds; `rows_per_s` is rows / the
wall time of `run_infer` (actor start-up, reading the test set and writing outputs.parquet included, nothing
subtracted). The script uses only `load_config`, `run_infer` and the loopback server, so the same file measures an
older checkout too (`PYTHONPATH=<checkout> python bench/infer_throughput.py --out NAME`).
Usage: python bench/infer_throughput.py [--latency-s 0.5] [--concurrency 1 16 64] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402

from sefl_ray.config import load_config  # noqa: E402
from sefl_ray.infer.run import run_infer  # noqa: E402
from sefl_ray.testing.loopback import LoopbackConfig, start_loopback_process  # noqa: E402


def run_level(base_url: str, work: Path, concurrency: int, latency_s: float, seconds: float) -> dict:
    rows = max(concurrency, math.ceil(concurrency * seconds / latency_s))
    test_set = work / f"test-{concurrency}.jsonl"
    test_set.write_text("".join(json.dumps({"id": f"item-{i}", "prompt": f"Give feedback on answer {i}."}) + "\n"
                                for i in range(rows)))
    config = load_config(None, [
        f"run_dir={work / f'c{concurrency}'}", f"infer.input={test_set}", "infer.mode=endpoint",
        "infer.endpoint=loop", "infer.name=bench", "infer.max_new_tokens=16", f"infer.concurrency={concurrency}",
        f"endpoints=[{{name: loop, model: loop-model, base_url: '{base_url}', max_concurrency: 1024}}]",
    ])
    started = time.perf_counter()
    outputs = run_infer(config)
    elapsed = time.perf_counter() - started
    table = pq.read_table(outputs)
    ok = table["status"].to_pylist().count("ok")
    ideal = concurrency / latency_s
    return {"concurrency": concurrency, "rows": table.num_rows, "ok": ok, "elapsed_s": elapsed,
            "rows_per_s": table.num_rows / elapsed, "ideal_per_s": ideal, "of_ideal": table.num_rows / elapsed / ideal,
            "mean_call_s": sum(table["latency_s"].to_pylist()) / table.num_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", default="infer_throughput", help="name of the results file in bench/results/")
    args = parser.parse_args()

    server, base_url = start_loopback_process(LoopbackConfig(latency_s=args.latency_s), replies="echo")
    work = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    try:
        rows = [run_level(base_url, work, c, args.latency_s, args.seconds) for c in args.concurrency]
    finally:
        ray.shutdown()
        server.terminate()
        server.wait()
    print(f"loopback model latency {args.latency_s} s; ideal = C / latency")
    print_table(rows, ["concurrency", "rows", "ok", "elapsed_s", "rows_per_s", "ideal_per_s", "of_ideal",
                       "mean_call_s"])
    path = write_results(args.out, rows, latency_s=args.latency_s, seconds=args.seconds)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
