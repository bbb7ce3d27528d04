"""SFT tokens/s of the Ray Train loop (1 worker) against a plain single-process torch loop, and packing vs padding.

Same model loaded the same way (the embedded SmolLM2-135M unless --model; `sefl_ray.train.loop.load_model`, with the
configured attention), same examples of mixed lengths (passages of the built-in corpus cut to log-uniform lengths),
same batches (`sefl_ray.train.data.micro_batches`), same loss, optimizer and thread count (Ray gives a worker
OMP_NUM_THREADS = its CPUs; the plain loop sets torch to as many threads).
Tokens/s counts real tokens (no padding) over the steady-state steps (the first WARMUP steps are dropped); the
fixed start-up cost of Ray Train (actors, process group, model load) is reported apart, as wall-clock seconds.
Usage: python bench/train_throughput.py [--steps 16] [--threads 2] [--repeats 3] [--model embedded:smollm2-135m]
                                        [--attn-implementation per_example_sdpa|sdpa]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

from sefl_ray.cluster import init_ray  # noqa: E402
from sefl_ray.config import RayConfig, TrainConfig, load_config  # noqa: E402
from sefl_ray.data.sft import to_chat_messages  # noqa: E402
from sefl_ray.models import resolve_model  # noqa: E402
from sefl_ray.train.loop import load_model  # noqa: E402
from sefl_ray.train.data import IGNORE_INDEX, load_sft_examples, micro_batches, model_inputs, real_token_count  # noqa: E402

WARMUP = 2
SEQ_LEN = 1024
PADDED_BATCH = 4  # examples per padded micro-batch; a packed micro-batch is one row of SEQ_LEN tokens


def mixed_length_rows(n: int, seed: int) -> list[dict]:
    corpus = Path(__file__).resolve().parents[1] / "sefl_ray" / "synth" / "corpus" / "edu_passages.jsonl"
    words = " ".join(json.loads(line)["text"] for line in corpus.read_text().splitlines()).split()
    rng = random.Random(seed)

    def fragment(low: int, high: int) -> str:
        length = int(math.exp(rng.uniform(math.log(low), math.log(high))))
        start = rng.randrange(0, len(words) - length)
        return " ".join(words[start: start + length])

    return [{"messages": to_chat_messages(fragment(8, 40), fragment(10, 300), fragment(10, 300))} for _ in range(n)]


def plain_loop(model_path: str, data, *, packing: bool, steps: int, threads: int, pad_token_id: int,
               attn_implementation: str) -> dict:
    """The reference: no Ray, no process group, the same model (loaded as the workers load it, with the same
    attention), batches and loss."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load_model(model_path, TrainConfig(packing=packing, attn_implementation=attn_implementation))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95))
    batches = micro_batches(data.train, batch_size=1 if packing else PADDED_BATCH, max_seq_len=SEQ_LEN,
                            packing=packing, pad_token_id=pad_token_id, seed=0, epoch=0, rank=0, world_size=1)
    tokens, seconds = 0, 0.0
    for step, batch in enumerate(batches[:steps]):
        started = time.perf_counter()
        n_items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        output = model(**model_inputs(batch, torch.device("cpu")), labels=batch["labels"], num_items_in_batch=n_items)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP:
            tokens += real_token_count(batch)
            seconds += time.perf_counter() - started
    return {"tokens_per_s": tokens / seconds, "steps": min(steps, len(batches))}


def token_fill(data, packing: bool, steps: int, pad_token_id: int) -> float:
    """Real tokens / computed tokens (padding and packing tails included) over the benchmark's steps."""
    batches = micro_batches(data.train, batch_size=1 if packing else PADDED_BATCH, max_seq_len=SEQ_LEN,
                            packing=packing, pad_token_id=pad_token_id, seed=0, epoch=0, rank=0, world_size=1)
    return sum(real_token_count(b) for b in batches[:steps]) / sum(b["input_ids"].numel() for b in batches[:steps])


def plain_loop_fresh(model_path: str, data_dir: Path, *, packing: bool, steps: int, threads: int,
                     attn_implementation: str) -> dict:
    """`plain_loop` in a fresh interpreter, as a Ray Train worker is one: a process that has already run these
    shapes can run them faster (oneDNN's primitive cache, the allocator's pools), which would flatter the baseline."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_plain_loop_child, model_path, str(data_dir), packing, steps, threads,
                           attn_implementation).result()


def _plain_loop_child(model_path: str, data_dir: str, packing: bool, steps: int, threads: int,
                      attn_implementation: str) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_sft_examples(Path(data_dir), tokenizer, max_seq_len=SEQ_LEN)
    return plain_loop(model_path, data, packing=packing, steps=steps, threads=threads,
                      pad_token_id=tokenizer.pad_token_id, attn_implementation=attn_implementation)


def ray_train_loop(run_dir: Path, model: str, dataset: Path, *, packing: bool, steps: int, threads: int,
                   attn_implementation: str) -> dict:
    from sefl_ray.train.run import run_train

    config = load_config(None, [
        f"run_dir={run_dir}", f"train.model={model}", f"train.dataset={dataset}", f"train.packing={packing}",
        f"train.batch_size={1 if packing else PADDED_BATCH}", f"train.max_seq_len={SEQ_LEN}",
        f"train.max_steps={steps}", f"train.cpus_per_worker={threads}", "train.num_workers=1", "train.lr=1e-5",
        "train.eval_at_start=false", "train.merge=false", "train.checkpoint_every_steps=100000", "train.warmup_ratio=0",
        f"train.attn_implementation={attn_implementation}",
    ])
    started = time.perf_counter()
    run_train(config)
    wall = time.perf_counter() - started
    metrics = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in metrics if "loss" in r][WARMUP:]
    seconds = sum(r["step_time_s"] for r in steady)
    return {"tokens_per_s": sum(r["tokens"] for r in steady) / seconds, "steps": len(steady) + WARMUP,
            "startup_s": wall - sum(r["step_time_s"] for r in metrics if "loss" in r)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--examples", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3, help="Ray Train runs of each layout, between plain runs")
    parser.add_argument("--attn-implementation", default=TrainConfig().attn_implementation,
                        help="train.attn_implementation for every loop, e.g. sdpa for transformers' masked rows")
    args = parser.parse_args()

    import ray
    from transformers import AutoTokenizer

    model_path = resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    rows = mixed_length_rows(args.examples, seed=0)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:-8]),
                          "valid": datasets.Dataset.from_list(rows[-8:])}).save_to_disk(str(work / "data"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_sft_examples(work / "data", tokenizer, max_seq_len=SEQ_LEN)
    lengths = sorted(len(e.input_ids) for e in data.train)
    fill = {packing: token_fill(data, packing, args.steps, tokenizer.pad_token_id) for packing in (True, False)}

    # This machine's speed drifts by 10-20 % between minutes: each repeat brackets its Ray Train runs between two
    # plain runs (fresh processes; a repeat's "after" is the next one's "before") and the goals are judged on the
    # median over repeats of the per-repeat ratios. Ray is shut down while the plain loop runs.
    loop_args = dict(steps=args.steps, threads=args.threads, attn_implementation=args.attn_implementation)
    plain = [plain_loop_fresh(model_path, work / "data", packing=True, **loop_args)]
    table, overheads, gains = [{"repeat": 0, "loop": "plain_torch_packed", **plain[0]}], [], []
    for repeat in range(1, args.repeats + 1):
        init_ray(RayConfig(num_cpus=args.threads))  # the local Ray `sefl-ray train` starts
        ray_runs = {name: ray_train_loop(work / f"{name}_{repeat}", model_path, work / "data", packing=packing,
                                         **loop_args)
                    for name, packing in (("ray_train_packed", True), ("ray_train_padded", False))}
        ray.shutdown()
        plain.append(plain_loop_fresh(model_path, work / "data", packing=True, **loop_args))
        baseline = (plain[-2]["tokens_per_s"] + plain[-1]["tokens_per_s"]) / 2
        overheads.append(1 - ray_runs["ray_train_packed"]["tokens_per_s"] / baseline)
        gains.append(ray_runs["ray_train_packed"]["tokens_per_s"] / ray_runs["ray_train_padded"]["tokens_per_s"])
        table += [{"repeat": repeat, "loop": name, **values} for name, values in ray_runs.items()]
        table.append({"repeat": repeat, "loop": "plain_torch_packed", **plain[-1]})
    overhead, packing_gain = statistics.median(overheads), statistics.median(gains)
    print(f"model {args.model}, {len(data.train)} examples, lengths p10/p50/p90 = "
          f"{lengths[len(lengths) // 10]}/{lengths[len(lengths) // 2]}/{lengths[9 * len(lengths) // 10]} tokens, "
          f"{args.threads} threads, {args.steps} steps ({WARMUP} warm-up dropped), {args.repeats} repeats")
    print_table(table, ["repeat", "loop", "tokens_per_s", "steps", "startup_s"])
    print(f"Ray Train overhead vs plain torch (each repeat against the plain runs around it): "
          f"{', '.join(f'{o:.1%}' for o in overheads)}; median {overhead:.1%} (goal <= 10%)")
    print(f"packing vs padding (Ray Train): {', '.join(f'{g:.2f}x' for g in gains)}; median {packing_gain:.2f}x "
          f"tokens/s (goal >= 1.5x); real tokens / computed tokens: packed {fill[True]:.2f}, padded "
          f"{fill[False]:.2f} ({fill[True] / fill[False]:.2f}x from fill alone); attention: {args.attn_implementation}")
    path = write_results("train_throughput", table, model=args.model, threads=args.threads, steps=args.steps,
                         repeats=args.repeats, seq_len=SEQ_LEN, padded_batch=PADDED_BATCH, ray_overhead=overhead,
                         ray_overhead_per_repeat=overheads, packing_vs_padding=packing_gain,
                         packing_vs_padding_per_repeat=gains, packed_fill=fill[True], padded_fill=fill[False],
                         packing_gain_from_fill=fill[True] / fill[False], attn_implementation=args.attn_implementation,
                         gpu_mfu="not run: no GPU lent to this task")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
