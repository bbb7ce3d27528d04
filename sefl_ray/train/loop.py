"""The per-worker SFT loop that Ray Train runs on every worker: read it top to bottom, like a torchtune recipe.

Each worker loads the base model, wraps it with the configured strategy, restores the last checkpoint if Ray Train
hands one over (after a worker failure or a resumed run), and trains from that step on the exact micro-batches it
would have seen. The loss is a per-token mean over the whole optimizer step (all micro-batches, all workers), so
the result does not depend on how the tokens are split into micro-batches or workers.
"""

from __future__ import annotations

import logging
import math
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist

from sefl_ray.config import TrainConfig
from sefl_ray.data.tables import read_jsonl
from sefl_ray.durable import write_json, write_jsonl
from sefl_ray.errors import SeflError
from sefl_ray.train.attention import PER_EXAMPLE_SDPA, check_examples_stay_apart, register_per_example_sdpa
from sefl_ray.train.data import IGNORE_INDEX, SftData, micro_batches, model_inputs, real_token_count
from sefl_ray.train.flops import flops_per_token, mfu, peak_flops_per_device
from sefl_ray.train.strategies import (
    Strategy,
    build_strategy,
    evaluating,
    read_trainer_state,
    write_trainer_state,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
META_FILE = "sefl_train.json"
PROBE_FILE = "probe.pt"


class NonFiniteLossError(SeflError):
    """The loss became NaN or inf: every later step would only spread it into the weights."""


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    train = TrainConfig.model_validate(loop_config["train"])
    plan = loop_config["plan"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    precision = resolve_precision(train.precision, device)
    torch.manual_seed(loop_config["seed"])
    data: SftData = ray.get(loop_config["data_ref"])

    model = load_model(loop_config["model_path"], train)
    model_config = model.config
    strategy = build_strategy(model, train, device=device, precision=precision, total_steps=plan["total_steps"])
    step, history = restore_checkpoint(strategy)
    batch_args = dict(
        batch_size=train.batch_size, max_seq_len=train.max_seq_len, packing=train.packing,
        pad_token_id=plan["pad_token_id"], seed=loop_config["seed"], rank=rank, world_size=world_size,
    )
    flops_per_token_value = flops_per_token(model_config, context_len=plan["mean_example_len"],
                                            lora=train.lora.enabled)
    peak_flops = peak_flops_per_device(device) if precision == "bf16" else None
    steps_per_epoch = plan["steps_per_epoch"]

    if step == 0 and train.eval_at_start:
        history.append(evaluate(strategy, data, batch_args, device, precision, step=0, epoch=0))
        _log(rank, history[-1])
    while step < plan["total_steps"]:
        epoch = step // steps_per_epoch
        batches = micro_batches(data.train, epoch=epoch, **batch_args)
        first = (step % steps_per_epoch) * train.grad_accum
        for start in range(first, steps_per_epoch * train.grad_accum, train.grad_accum):
            record = train_step(strategy, batches[start: start + train.grad_accum], device, precision)
            step += 1
            if not math.isfinite(record["loss"]):  # every worker sees the same all-reduced loss, so all stop
                raise NonFiniteLossError(
                    f"the training loss is {record['loss']} at step {step} (epoch {epoch}, lr {record['lr']:.3g}): "
                    "training stopped, and no checkpoint of this step was written; lower train.learning_rate, "
                    "or check the data"
                )
            tokens_per_s = record["tokens"] / world_size / record["step_time_s"]
            record.update(step=step, epoch=epoch, tokens_per_s_per_worker=tokens_per_s,
                          mfu=mfu(tokens_per_s, flops_per_token_value, peak_flops))
            history.append(record)
            if step % train.log_every_steps == 0:
                _log(rank, record)
            end_of_epoch = step % steps_per_epoch == 0
            if end_of_epoch or step == plan["total_steps"]:
                history.append(evaluate(strategy, data, batch_args, device, precision, step=step, epoch=epoch))
                _log(rank, history[-1])
            if step % train.checkpoint_every_steps == 0 or step == plan["total_steps"]:
                probe = plan["probe_input_ids"] if step == plan["total_steps"] else None
                save_checkpoint(strategy, step, history, loop_config["meta"], probe, device, precision)
            if step == plan["total_steps"]:
                break


def train_step(
    strategy: Strategy, group: list[dict[str, torch.Tensor]], device: torch.device, precision: str
) -> dict[str, Any]:
    """One optimizer step over `group` (the micro-batches to accumulate); returns the step's metrics."""
    started = time.perf_counter()
    loss_tokens = torch.tensor(
        float(sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in group)), device=device
    )
    dist.all_reduce(loss_tokens)
    # Gradients are averaged over workers, so each worker's share of the global token mean is scaled by world size.
    per_worker_items = loss_tokens / dist.get_world_size()
    loss_sum = torch.zeros((), device=device)
    real_tokens = 0
    for index, batch in enumerate(group):
        with strategy.accumulate(sync=index == len(group) - 1), _autocast(device, precision):
            output = strategy.module(**model_inputs(batch, device), labels=batch["labels"].to(device),
                                     num_items_in_batch=per_worker_items)
            strategy.backward(output.loss)
        loss_sum += output.loss.detach().float() * per_worker_items
        real_tokens += real_token_count(batch)
    grad_norm = strategy.step()
    totals = torch.tensor([float(loss_sum), float(real_tokens)], device=device)
    dist.all_reduce(totals)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        "loss": float(totals[0] / loss_tokens),
        "lr": strategy.lr(),
        "grad_norm": grad_norm,
        "tokens": int(totals[1]),
        "step_time_s": time.perf_counter() - started,
    }


def evaluate(
    strategy: Strategy, data: SftData, batch_args: dict[str, Any], device: torch.device, precision: str,
    *, step: int, epoch: int,
) -> dict[str, Any]:
    """Per-token loss on the held-out examples (each worker takes its share, in order, one sequence at a time)."""
    args = {**batch_args, "batch_size": 1}
    totals = torch.zeros(2, device=device)
    with evaluating(strategy.module), _autocast(device, precision):
        for batch in micro_batches(data.valid, epoch=0, shuffle=False, **args):
            n_items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            output = strategy.module(**model_inputs(batch, device), labels=batch["labels"].to(device),
                                     num_items_in_batch=n_items)
            totals += torch.tensor([float(output.loss) * n_items, n_items], device=device)
    dist.all_reduce(totals)
    eval_loss = float(totals[0] / totals[1]) if totals[1] > 0 else None
    return {"step": step, "epoch": epoch, "eval_loss": eval_loss, "eval_tokens": int(totals[1])}


def load_model(model_path: str, train: TrainConfig) -> torch.nn.Module:
    """The base model in fp32 (the master weights; bf16 happens in autocast / FSDP's policy / DeepSpeed), with LoRA
    adapters when configured. With packing, it must first show that its attention keeps packed examples apart."""
    from transformers import AutoModelForCausalLM

    if train.attn_implementation == PER_EXAMPLE_SDPA:
        register_per_example_sdpa()
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation=train.attn_implementation
    )
    model.config.use_cache = False
    if train.packing:
        check_examples_stay_apart(model)
    if train.lora.enabled:
        model = apply_lora(model, train)
    return model


def apply_lora(model: torch.nn.Module, train: TrainConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=train.lora.r, lora_alpha=train.lora.alpha, lora_dropout=train.lora.dropout,
        target_modules=train.lora.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def restore_checkpoint(strategy: Strategy) -> tuple[int, list[dict[str, Any]]]:
    """(step, metrics history) of the checkpoint Ray Train hands over, after loading it; (0, []) on a fresh run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as directory:
        directory = Path(directory)
        strategy.load(directory)
        step = read_trainer_state(directory)["step"]
        history = read_jsonl(directory / METRICS_FILE)
    logger.info("resumed from %s at step %d", checkpoint.path, step)
    history.append({"step": step, "resumed_from": checkpoint.path})
    return step, history


def save_checkpoint(
    strategy: Strategy, step: int, history: list[dict[str, Any]], meta: dict[str, Any],
    probe_input_ids: list[int] | None, device: torch.device, precision: str,
) -> None:
    """Every worker writes its shards to a local folder and reports it; Ray Train gathers them in storage.

    The final checkpoint also holds the trained model's logits on a probe input, computed here under the training
    wrapper, so `merge` can prove the merged folder reproduces the trained weights.
    """
    rank = dist.get_rank()
    directory = Path(tempfile.mkdtemp(prefix=f"sefl-ckpt-{step}-rank{rank}-"))
    strategy.save(directory)
    worker = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
              "device": str(device)}
    write_json(directory / f"worker_{rank}.json", worker)  # which node wrote which shard
    probe_logits = _probe_logits(strategy, probe_input_ids, device, precision) if probe_input_ids else None
    if rank == 0:
        write_trainer_state(directory, {"step": step})
        write_jsonl(directory / METRICS_FILE, history)
        write_json(directory / META_FILE, {**meta, "step": step})
        if probe_logits is not None:
            torch.save({"input_ids": probe_input_ids, "logits": probe_logits}, directory / PROBE_FILE)
    latest = next((r for r in reversed(history) if "loss" in r), {})
    metrics = {"step": step, **{k: v for k, v in latest.items() if isinstance(v, (int, float)) and v is not None}}
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                     checkpoint_dir_name=f"step_{step:06d}")
    shutil.rmtree(directory, ignore_errors=True)


def _probe_logits(
    strategy: Strategy, input_ids: list[int], device: torch.device, precision: str
) -> torch.Tensor:
    with evaluating(strategy.module), _autocast(device, precision):
        output = strategy.module(input_ids=torch.tensor([input_ids], device=device))
    return output.logits.float().cpu()


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _log(rank: int, record: dict[str, Any]) -> None:
    if rank == 0:
        logger.info("train %s", {k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()})
