"""The SFT stage: data and masks, packing, strategies on 2 real Ray Train workers, checkpoints, merge, push."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from sefl_ray.config import TrainConfig, load_config
from sefl_ray.data.sft import to_chat_messages
from sefl_ray.errors import ConfigError, InputNotFoundError
from sefl_ray.train.data import (
    IGNORE_INDEX,
    PACKED_WIDTH_MULTIPLE,
    count_rows,
    load_sft_examples,
    micro_batches,
    model_inputs,
    row_to_messages,
    tokenize_messages,
)
from sefl_ray.train.flops import flops_per_token, peak_flops_for_name
from sefl_ray.train.attention import PER_EXAMPLE_SDPA
from sefl_ray.train.loop import PROBE_FILE, load_model
from sefl_ray.train.merge import MergeMismatchError, NonFiniteWeightsError, merge_checkpoint, merge_run
from sefl_ray.train.strategies import deepspeed_config


def feedback_rows(n: int) -> list[dict]:
    """Arithmetic feedback with a pattern a tiny model can learn in a few dozen steps."""
    return [
        {"messages": to_chat_messages(f"Add {i} and {i + 1}.", f"The sum is {2 * i}.",
                                      f"Not quite: {i} plus {i + 1} is {2 * i + 1}; you forgot the one.",
                                      system_prompt="Give feedback.")}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def sft_dataset(tmp_path_factory) -> Path:
    rows = feedback_rows(48)
    path = tmp_path_factory.mktemp("sft-data") / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:40]),
                          "valid": datasets.Dataset.from_list(rows[40:])}).save_to_disk(str(path))
    return path


def train_config(run_dir: Path, model_dir: Path, dataset: Path, *overrides: str):
    return load_config(None, [
        f"run_dir={run_dir}", f"train.model={model_dir}", f"train.dataset={dataset}", "train.num_workers=2",
        "train.max_seq_len=256", "train.lr=3e-3", "train.epochs=2", "train.batch_size=2",
        "train.checkpoint_every_steps=4", "train.warmup_ratio=0", *overrides,
    ])


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]


# --- data -------------------------------------------------------------------------------------------------------


def test_labels_cover_exactly_the_assistant_turn(tiny_tokenizer):
    messages = to_chat_messages("Add 2 and 3.", "It is 6.", "Recount: 2 plus 3 is 5.")
    example, truncated = tokenize_messages(messages, tiny_tokenizer, max_seq_len=512)
    # The tiny model's template marks the assistant turn with {% generation %}: an independent account of the span.
    reference = tiny_tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    assert example.input_ids == reference["input_ids"]
    ours = [label != IGNORE_INDEX for label in example.labels]
    theirs = [bool(flag) for flag in reference["assistant_masks"]]
    assert ours[: len(theirs)] == theirs and sum(ours) > 5 and not truncated
    learned = tiny_tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE_INDEX])
    assert learned.startswith("### FEEDBACK: Recount") and learned.rstrip().endswith("<|im_end|>")


def test_multi_turn_conversations_learn_every_assistant_turn(tiny_tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "first reply"},
                {"role": "user", "content": "more"}, {"role": "assistant", "content": "second reply"}]
    example, _ = tokenize_messages(messages, tiny_tokenizer, max_seq_len=512)
    learned = tiny_tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE_INDEX])
    assert "first reply" in learned and "second reply" in learned and "more" not in learned


def test_sefl_prompt_completion_rows_and_bad_rows():
    messages = row_to_messages({"prompt": "### ASSIGNMENT:\na\n\n### ANSWER:\nb", "completion": "### FEEDBACK: c"})
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[2]["content"] == "### FEEDBACK: c"
    with pytest.raises(ConfigError, match="neither `messages` nor `prompt`"):
        row_to_messages({"text": "only a passage"})


def test_dataset_without_valid_split_is_held_out_by_seed(tmp_path, tiny_tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in feedback_rows(20)))
    data = load_sft_examples(path, tiny_tokenizer, max_seq_len=256, valid_fraction=0.25, seed=1)
    again = load_sft_examples(path, tiny_tokenizer, max_seq_len=256, valid_fraction=0.25, seed=1)
    assert (len(data.train), len(data.valid)) == (15, 5)
    assert data.valid == again.valid
    with pytest.raises(InputNotFoundError):
        load_sft_examples(tmp_path / "missing.jsonl", tiny_tokenizer, max_seq_len=256)


def test_packing_keeps_examples_whole_and_ranks_disjoint(sft_dataset, tiny_tokenizer):
    data = load_sft_examples(sft_dataset, tiny_tokenizer, max_seq_len=256)
    args = dict(batch_size=2, max_seq_len=256, packing=True, pad_token_id=tiny_tokenizer.pad_token_id, seed=0,
                epoch=0, world_size=2)
    rank0, rank1 = micro_batches(data.train, rank=0, **args), micro_batches(data.train, rank=1, **args)
    again = micro_batches(data.train, rank=0, **args)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(rank0, again))
    assert len(rank0) == len(rank1) > 0
    starts = []
    for batch in rank0 + rank1:
        for row_ids, row_positions, row_labels in zip(batch["input_ids"], batch["position_ids"], batch["labels"]):
            boundaries = [i for i, p in enumerate(row_positions.tolist()) if p == 0]
            for start, end in zip(boundaries, boundaries[1:] + [len(row_ids)]):
                segment = row_ids[start:end].tolist()
                if segment[0] != tiny_tokenizer.pad_token_id:
                    starts.append(tuple(segment))
                assert row_labels[start] == IGNORE_INDEX  # no example's first token is predicted across a boundary
    examples = {tuple(e.input_ids) for e in data.train}
    assert set(starts) <= examples and len(starts) == len(set(starts))  # whole examples, none seen twice
    assert count_rows(data.train, max_seq_len=256, packing=True) <= len(data.train) // 2
    for batch in rank0 + rank1:  # rows stop after their fullest row's tokens, rounded up to the width multiple
        width = batch["input_ids"].shape[1]
        assert width <= 256 and (width % PACKED_WIDTH_MULTIPLE == 0 or width == 256)
        assert width - int(batch["real_tokens"].max()) < PACKED_WIDTH_MULTIPLE


@pytest.mark.parametrize("attn_implementation", ["sdpa", PER_EXAMPLE_SDPA])
def test_packed_and_padded_rows_give_each_example_its_logits_alone(tiny_model_dir, tiny_tokenizer, attn_implementation):
    """Logits of two examples packed in one row, or padded in one batch, equal their logits alone: no attention across
    examples (transformers' block-diagonal sdpa mask, or our per-example sdpa) and none to the padding."""
    model = load_model(str(tiny_model_dir), TrainConfig(attn_implementation=attn_implementation)).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    first, _ = tokenize_messages(to_chat_messages("Add 1 and 2.", "4", "No: 3.", system_prompt="Be brief."),
                                 tiny_tokenizer, 256)
    second, _ = tokenize_messages(to_chat_messages("Name a prime.", "9", "9 = 3 x 3.", system_prompt="Be kind."),
                                  tiny_tokenizer, 256)
    args = dict(max_seq_len=256, shuffle=False, pad_token_id=tiny_tokenizer.pad_token_id, seed=0, epoch=0, rank=0,
                world_size=1)
    packed_batch = micro_batches([first, second], batch_size=1, packing=True, **args)[0]
    padded_batch = micro_batches([first, second], batch_size=2, packing=False, **args)[0]
    assert packed_batch["input_ids"].shape[0] == 1 and padded_batch["input_ids"].shape[0] == 2
    with torch.no_grad():
        packed = model(**model_inputs(packed_batch, torch.device("cpu"))).logits[0]
        padded = model(**model_inputs(padded_batch, torch.device("cpu"))).logits
        alone = [reference(input_ids=torch.tensor([e.input_ids])).logits[0] for e in (first, second)]
    n, m = len(first.input_ids), len(second.input_ids)
    torch.testing.assert_close(packed[:n], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[n: n + m], alone[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded[0, :n], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded[1, :m], alone[1], atol=1e-5, rtol=1e-4)


def test_packing_refuses_an_attention_that_lets_examples_mix(tiny_model_dir):
    """An architecture whose attention never sees the position ids would silently attend across packed examples;
    loading it for packed training fails with a clear error instead (here: an attention that drops them)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def whole_row_causal(module, query, key, value, attention_mask, position_ids=None, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

    AttentionInterface.register("whole_row_causal", whole_row_causal)
    with pytest.raises(ConfigError, match="attend to each other"):
        load_model(str(tiny_model_dir), TrainConfig(attn_implementation="whole_row_causal"))
    model = load_model(str(tiny_model_dir), TrainConfig(attn_implementation="whole_row_causal", packing=False))
    assert model.config._attn_implementation == "whole_row_causal"


# --- config pieces ----------------------------------------------------------------------------------------------


def test_mfu_tables_and_flops():
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_name("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for_name("AMD Instinct MI250X") == 191.5e12  # ROCm reports each GCD as a device
    assert peak_flops_for_name("AMD Instinct MI300X") == 1307e12
    assert peak_flops_for_name("Some CPU") is None
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512)
    model = AutoModelForCausalLM.from_config(config)
    weights = sum(p.numel() for name, p in model.named_parameters() if "norm" not in name and "embed" not in name)
    assert flops_per_token(config, context_len=0, lora=False) == 6 * weights
    assert flops_per_token(config, context_len=0, lora=True) == 4 * weights


def test_deepspeed_config_from_ours_or_a_users_file(tmp_path):
    train = TrainConfig(strategy="deepspeed", batch_size=4, grad_accum=2)
    ours = deepspeed_config(train, "bf16")
    assert ours["zero_optimization"]["stage"] == 3 and ours["bf16"]["enabled"]
    assert ours["train_micro_batch_size_per_gpu"] == 4 and ours["gradient_accumulation_steps"] == 2
    user_file = tmp_path / "ds.json"
    user_file.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
                                     "zero_optimization": {"stage": 2, "overlap_comm": True}}))
    train.deepspeed.config_file = str(user_file)
    theirs = deepspeed_config(train, "fp32")
    assert theirs["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert theirs["train_micro_batch_size_per_gpu"] == 4 and "train_batch_size" not in theirs


def test_train_config_is_strict():
    with pytest.raises(ConfigError, match="train.strategy"):
        load_config(None, ["train.strategy=zero4"])
    with pytest.raises(ConfigError, match="train.lora.rank"):
        load_config(None, ["train.lora.rank=8"])


# --- real training on Ray Train -----------------------------------------------------------------------------------

# Every strategy and ZeRO stage, and LoRA on the two sharded ones whose merge is hardest (FSDP2's DTensors, ZeRO-3's
# partitioned parameters): LoRA on DDP and ZeRO-2 goes through the same code and is left out to keep the suite short.
STRATEGIES = [
    ("ddp", "full"), ("fsdp2", "full"), ("fsdp2", "lora"), ("deepspeed-2", "full"), ("deepspeed-3", "lora"),
]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,mode", STRATEGIES, ids=[f"{s}-{m}" for s, m in STRATEGIES])
def test_two_workers_train_checkpoint_and_merge(ray_session, tmp_path, tiny_model_dir, sft_dataset, strategy, mode):
    overrides = [f"train.strategy={strategy.split('-')[0]}", f"train.lora.enabled={mode == 'lora'}"]
    if strategy.startswith("deepspeed"):
        overrides.append(f"train.deepspeed.zero_stage={strategy.split('-')[1]}")
    config = train_config(tmp_path, tiny_model_dir, sft_dataset, *overrides)
    from sefl_ray.train.run import run_train

    run_train(config)
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    metrics = read_metrics(tmp_path)
    losses = [r["loss"] for r in metrics if "loss" in r]
    assert len(losses) == summary["plan"]["total_steps"] == summary["steps"] > 4
    assert losses[-1] < losses[0] and summary["final_eval_loss"] < summary["first_eval_loss"]
    assert all(r["tokens_per_s_per_worker"] > 0 and r["mfu"] is None for r in metrics if "loss" in r)

    checkpoints = sorted(Path(summary["checkpoint"]).parent.glob("step_*"))
    assert [c.name for c in checkpoints][-1] == f"step_{summary['steps']:06d}" and len(checkpoints) == 2
    # The merged folder loads with plain transformers and gives the logits the trained (sharded) model gave.
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "train" / "merged", dtype=torch.float32).eval()
    probe = torch.load(Path(summary["checkpoint"]) / PROBE_FILE, weights_only=True)
    with torch.no_grad():
        logits = merged(input_ids=torch.tensor([probe["input_ids"]])).logits
    torch.testing.assert_close(logits, probe["logits"], atol=1e-4, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=torch.tensor([probe["input_ids"]])).logits, logits, atol=1e-3)
    if mode == "lora":
        from peft import PeftModel

        adapter = PeftModel.from_pretrained(base, tmp_path / "train" / "adapter")
        with torch.no_grad():
            torch.testing.assert_close(adapter(input_ids=torch.tensor([probe["input_ids"]])).logits, logits,
                                       atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_rerun_skips_and_merge_detects_the_wrong_checkpoint(ray_session, tmp_path, tiny_model_dir, sft_dataset, caplog):
    from sefl_ray.train.run import run_train

    config = train_config(tmp_path, tiny_model_dir, sft_dataset)
    run_train(config)
    summary_before = (tmp_path / "train" / "summary.json").read_text()
    with caplog.at_level("INFO"):
        run_train(config)
    assert "skipping" in caplog.text and (tmp_path / "train" / "summary.json").read_text() == summary_before

    summary = json.loads(summary_before)
    last = Path(summary["checkpoint"])
    earlier = sorted(last.parent.glob("step_*"))[0]
    # The earlier checkpoint's weights do not give the final logits: merge must refuse, not pass silently.
    (earlier / PROBE_FILE).write_bytes((last / PROBE_FILE).read_bytes())
    merged_weights = (tmp_path / "train" / "merged" / "model.safetensors").read_bytes()
    with pytest.raises(MergeMismatchError, match="do not reproduce"):
        merge_checkpoint(earlier, tmp_path / "train")
    # the failed merge left the previous merged model exactly as it was, and no staging folder behind
    assert (tmp_path / "train" / "merged" / "model.safetensors").read_bytes() == merged_weights
    assert sorted(p.name for p in (tmp_path / "train").iterdir() if p.name.startswith(".")) == []

    # a checkpoint holding a NaN weight is refused, and again the previous merged model stays
    import torch.distributed.checkpoint as dcp

    poisoned = tmp_path / "poisoned"
    shutil.copytree(last, poisoned)
    base_weights = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    state = {"model": {name: tensor.clone() for name, tensor in base_weights.items()}}
    dcp.load(state, checkpoint_id=str(poisoned))
    next(iter(state["model"].values()))[0, 0] = float("nan")
    dcp.save(state, checkpoint_id=str(poisoned))
    with pytest.raises(NonFiniteWeightsError, match="NaN or inf in 1 weight"):
        merge_checkpoint(poisoned, tmp_path / "train")
    assert (tmp_path / "train" / "merged" / "model.safetensors").read_bytes() == merged_weights
    (earlier / PROBE_FILE).unlink()
    merged = merge_run(tmp_path, checkpoint=earlier.name.split("_")[1].lstrip("0"), out_dir=tmp_path / "early")
    assert (merged / "model.safetensors").exists()

    card = (tmp_path / "train" / "merged" / "README.md").read_text()
    assert summary["fingerprint"] in card and "eval loss" in card and str(sft_dataset) in card
    result = subprocess.run(
        [sys.executable, "-m", "sefl_ray.cli", "push", str(tmp_path / "train" / "merged"), "--repo", "me/tuned",
         "--repo-type", "model", "--dry-run"], capture_output=True, text=True, check=True,
    )
    listed = result.stdout.splitlines()
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(listed)


def test_a_nan_loss_stops_training_with_one_clear_line(ray_session, tmp_path, tiny_model_dir, sft_dataset):
    from sefl_ray.train.run import TrainingFailedError, run_train

    config = train_config(tmp_path, tiny_model_dir, sft_dataset, "train.lr=1e30", "train.max_failures=0",
                          "train.epochs=1")
    with pytest.raises(TrainingFailedError) as failure:
        run_train(config)
    message = str(failure.value)
    assert message.startswith("the training loss is ") and "at step " in message and "\n" not in message
    assert not (tmp_path / "train" / "merged").exists() and not (tmp_path / "train" / "summary.json").exists()


def test_train_and_merge_user_errors_are_one_line(tmp_path):
    for argv in (["train", "jobs/local.yaml", "--set", f"run_dir={tmp_path}"], ["merge", str(tmp_path)]):
        result = subprocess.run([sys.executable, "-m", "sefl_ray.cli", *argv], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"sefl-ray {argv[0]}: error: ") and "Traceback" not in result.stderr
        assert "does not exist" in last_line or "neither a run dir" in last_line


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_checkpoint_and_finishes_the_same_steps(
    ray_session, tmp_path, tiny_model_dir, sft_dataset
):
    import os
    import signal
    import threading
    import time

    from sefl_ray.train.run import run_train

    config = train_config(tmp_path, tiny_model_dir, sft_dataset, "train.max_steps=120",
                          "train.checkpoint_every_steps=10", "train.max_failures=1", "train.merge=false")
    failures: list[BaseException] = []

    def train() -> None:
        try:
            run_train(config)
        except BaseException as exc:  # re-raised in the test thread below
            failures.append(exc)

    runner = threading.Thread(target=train)
    runner.start()
    deadline = time.monotonic() + 240
    # Kill only once Ray Train's controller has registered a checkpoint (it then writes this snapshot); a checkpoint
    # folder alone may still sit in a worker's report queue, and dies with the worker.
    while not list((tmp_path / "train" / "ray").glob("sft-*/checkpoint_manager_snapshot.json")):
        assert time.monotonic() < deadline and runner.is_alive(), failures
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True).stdout.split()
    assert workers, "no Ray Train worker process found to kill"
    os.kill(int(workers[-1]), signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive() and not failures, failures

    metrics = read_metrics(tmp_path)
    steps = [r["step"] for r in metrics if "loss" in r]
    resumes = [r for r in metrics if "resumed_from" in r]
    assert steps == list(range(1, 121))  # every step once: those after the checkpoint were redone, not duplicated
    assert len(resumes) == 1 and resumes[0]["step"] % 10 == 0 and 0 < resumes[0]["step"] < 120
    assert json.loads((tmp_path / "train" / "summary.json").read_text())["steps"] == 120


MULTINODE_SCRIPT = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from sefl_ray.config import load_config
from sefl_ray.train.run import run_train

run_dir, model_dir, dataset = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address)
config = load_config(None, [f"run_dir={run_dir}", f"train.model={model_dir}", f"train.dataset={dataset}",
                            "train.num_workers=2", "train.placement_strategy=STRICT_SPREAD", "train.max_steps=4",
                            "train.lr=3e-3", "train.max_seq_len=256", "train.merge=false"])
run_train(config)
print(json.dumps(sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_two_node_cluster_places_a_worker_on_each_node(tmp_path, tiny_model_dir, sft_dataset):
    """A real two-node Ray cluster (ray.cluster_utils.Cluster), in its own process beside the session's Ray."""
    result = subprocess.run([sys.executable, "-c", MULTINODE_SCRIPT, str(tmp_path), str(tiny_model_dir),
                             str(sft_dataset)], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    node_ids = json.loads(result.stdout.strip().splitlines()[-1])
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    workers = [json.loads((Path(summary["checkpoint"]) / f"worker_{rank}.json").read_text()) for rank in (0, 1)]
    assert len(node_ids) == 2 and sorted(w["node_id"] for w in workers) == node_ids
    assert summary["steps"] == 4 and summary["final_eval_loss"] < summary["first_eval_loss"]


@pytest.mark.slow
def test_embedded_model_fine_tuned_on_32_synthesized_examples_lowers_held_out_loss(
    ray_session, tmp_path, embedded_model_dir
):
    """synth (loopback teacher/student quoting their prompts) -> export -> a short full fine-tune of SmolLM2-135M."""
    from sefl_ray.export.run import run_export
    from sefl_ray.gate.run import run_gate
    from sefl_ray.synth.run import run_synth
    from sefl_ray.testing.loopback import LoopbackServer
    from sefl_ray.testing.schema_replies import grounded_schema_reply
    from sefl_ray.train.run import run_train

    with LoopbackServer(replies=grounded_schema_reply) as server:
        config = load_config(None, [
            f"run_dir={tmp_path}", f"endpoints=[{{name: loop, model: loop-model, base_url: '{server.base_url}'}}]",
            "synth.teacher_endpoint=loop", "synth.student_endpoint=loop", "synth.num_conversations=32",
            "synth.samples_per_source=2", "export.valid_fraction=0.25",
            "train.model=embedded:smollm2-135m", "train.num_workers=1", "train.cpus_per_worker=2",
            "train.max_seq_len=512", "train.batch_size=1", "train.lr=1e-4", "train.epochs=1", "train.warmup_ratio=0",
            "train.checkpoint_every_steps=1000", "train.merge=false", "gate.enabled=false",
        ])
        run_synth(config)
    run_gate(config)
    run_export(config)
    assert datasets.load_from_disk(str(tmp_path / "export" / "hf")).num_rows == {"train": 24, "valid": 8}
    run_train(config)
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["data"]["valid_examples"] == 8 and summary["steps"] >= 5
    assert summary["final_eval_loss"] < 0.8 * summary["first_eval_loss"], summary
