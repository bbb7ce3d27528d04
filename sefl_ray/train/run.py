"""`sefl-ray train`: tokenize on the driver, run the SFT loop on Ray Train workers, then merge the last checkpoint.

Outputs under RUN_DIR/train/:
    config.yaml        the resolved config
    ray/sft-<fp>/      Ray Train's run folder (unless `train.storage_path` points elsewhere): step_NNNNNN
                       checkpoints, each with every worker's shards, metrics.jsonl, trainer_state.json, sefl_train.json
    metrics.jsonl      per-step loss, lr, grad norm, tokens/s per worker, MFU; eval loss per epoch
    summary.json       the fingerprint, the plan, the final metrics and the final checkpoint's path
    merged/, adapter/  the merged HF model folder (and the LoRA adapter) unless `train.merge` is false

The Ray Train run is named after a fingerprint of everything that decides the weights (model, data, config, seed),
so running the same command again resumes an interrupted run and a changed config starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import re
import logging
import shutil
from pathlib import Path
from typing import Any

import ray

from sefl_ray.cluster import init_ray
from sefl_ray.config import (
    SeflConfig, TrainConfig, config_fingerprint, decided_by, log_resolved_config, save_resolved_config,
)
from sefl_ray.data.tables import read_jsonl
from sefl_ray.durable import set_aside, unreadable_reason, write_json
from sefl_ray.errors import ConfigError, InputNotFoundError, SeflError
from sefl_ray.layout import RunLayout
from sefl_ray.train.data import SftData, count_rows, load_sft_examples

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
PROBE_TOKENS = 64


class TrainingFailedError(SeflError):
    """Ray Train gave up on the run (its workers failed more often than `train.max_failures` allows)."""


def run_train(config: SeflConfig) -> Path:
    train = config.train
    layout = RunLayout(config.run_dir)
    out_dir = layout.train_dir
    log_resolved_config(config, "train")
    dataset = train.dataset or str(layout.export_hf)
    if not Path(dataset).exists():
        raise InputNotFoundError(f"train.dataset: {dataset} does not exist; run the export stage or set train.dataset")
    model_path = _resolve_model(train.model)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_sft_examples(dataset, tokenizer, max_seq_len=train.max_seq_len, train_split=train.train_split,
                             valid_split=train.valid_split, valid_fraction=train.valid_fraction, seed=config.seed)
    fingerprint = run_fingerprint(train, model_path, data, config.seed)
    summary_path = out_dir / SUMMARY_FILE
    if _finished(summary_path, fingerprint, train):
        logger.info("train: %s already holds a finished run with fingerprint %s; skipping", out_dir, fingerprint)
        return out_dir

    plan = plan_training(train, data, pad_token_id=tokenizer.pad_token_id)
    save_resolved_config(config, out_dir)  # once the inputs are known good: a bad one leaves the last run's copy
    init_ray(config.ray)
    checkpoint = fit(train, plan, data, model_path=model_path, dataset=dataset, fingerprint=fingerprint,
                     out_dir=out_dir, seed=config.seed)
    summary = write_outputs(checkpoint, out_dir, plan=plan, data=data, fingerprint=fingerprint)
    if train.merge:
        from sefl_ray.train.merge import merge_checkpoint

        with checkpoint.as_directory() as local_checkpoint:  # downloads it when storage is s3:// or the like
            merge_checkpoint(local_checkpoint, out_dir)
    summary["finished"] = True
    write_json(summary_path, summary)
    return out_dir


def plan_training(train: TrainConfig, data: SftData, *, pad_token_id: int) -> dict[str, Any]:
    """Steps per epoch and in total, decided once on the driver so every worker (and every restart) agrees."""
    rows = count_rows(data.train, max_seq_len=train.max_seq_len, packing=train.packing)
    micro_per_worker = rows // train.num_workers // train.batch_size
    steps_per_epoch = micro_per_worker // train.grad_accum
    if steps_per_epoch == 0:
        unit = "packed sequences" if train.packing else "examples"
        raise ConfigError(
            f"train: {rows} {unit} cannot fill one step of num_workers × batch_size × grad_accum = "
            f"{train.num_workers} × {train.batch_size} × {train.grad_accum}; lower those or add data"
        )
    total_steps = train.max_steps or train.epochs * steps_per_epoch
    probe_source = data.valid[0] if data.valid else data.train[0]
    return {
        "rows_per_epoch": rows,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "pad_token_id": pad_token_id,
        "mean_example_len": sum(len(e.input_ids) for e in data.train) / len(data.train),
        "probe_input_ids": probe_source.input_ids[:PROBE_TOKENS],
    }


def fit(
    train: TrainConfig, plan: dict[str, Any], data: SftData, *, model_path: str, dataset: str, fingerprint: str,
    out_dir: Path, seed: int,
) -> ray.train.Checkpoint:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from sefl_ray.train.loop import train_loop_per_worker

    storage_path = train.storage_path or str((out_dir / "ray").resolve())
    meta = {"model_path": model_path, "model": train.model, "dataset": dataset, "fingerprint": fingerprint,
            "train": train.model_dump(mode="json"), "data": data.stats}
    loop_config = {"train": train.model_dump(mode="json"), "plan": plan, "seed": seed, "model_path": model_path,
                   "data_ref": ray.put(data), "meta": meta}
    backend = train.backend if train.backend != "auto" else ("nccl" if train.use_gpu else "gloo")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(
            num_workers=train.num_workers, use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker}, placement_strategy=train.placement_strategy,
        ),
        run_config=RunConfig(
            name=f"sft-{fingerprint}",
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=train.num_checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=train.max_failures),
            worker_runtime_env={"env_vars": worker_env_vars(train)},
        ),
    )
    logger.info("train: %d steps (%d per epoch) on %d worker(s), strategy %s%s", plan["total_steps"],
                plan["steps_per_epoch"], train.num_workers, train.strategy, " + LoRA" if train.lora.enabled else "")
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        non_finite = re.search(r"NonFiniteLossError: (.+)", str(exc))
        if non_finite:  # the loop's own message, without the workers' tracebacks around it
            raise TrainingFailedError(non_finite.group(1).strip()) from exc
        raise TrainingFailedError(f"training failed after {train.max_failures} restart(s): {exc}") from exc
    if result.checkpoint is None:
        raise TrainingFailedError("training finished without a checkpoint")
    return result.checkpoint


def worker_env_vars(train: TrainConfig) -> dict[str, str]:
    """DeepSpeed picks its accelerator by probing; on CPU workers say so, or it tries CUDA."""
    return {} if train.use_gpu else {"DS_ACCELERATOR": "cpu"}


def write_outputs(
    checkpoint: ray.train.Checkpoint, out_dir: Path, *, plan: dict[str, Any], data: SftData, fingerprint: str
) -> dict[str, Any]:
    from sefl_ray.train.loop import METRICS_FILE

    with checkpoint.as_directory() as directory:
        shutil.copyfile(Path(directory) / METRICS_FILE, out_dir / METRICS_FILE)
    history = read_jsonl(out_dir / METRICS_FILE)
    steps = [r for r in history if "loss" in r]
    evals = [r for r in history if r.get("eval_loss") is not None]
    summary = {
        "fingerprint": fingerprint,
        "checkpoint": checkpoint.path,
        "plan": {k: v for k, v in plan.items() if k != "probe_input_ids"},
        "data": data.stats,
        "steps": len(steps),
        "final_loss": steps[-1]["loss"] if steps else None,
        "first_eval_loss": evals[0]["eval_loss"] if evals else None,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "mean_tokens_per_s_per_worker": (
            sum(r["tokens_per_s_per_worker"] for r in steps[1:]) / (len(steps) - 1) if len(steps) > 1 else None
        ),
        "finished": False,
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    logger.info("train: done, %s", {k: v for k, v in summary.items() if k not in ("plan", "data")})
    return summary


def run_train_and_merge(config: SeflConfig) -> Path:
    """The pipeline's train stage: `infer` runs the merged folder as the tuned system, so it always merges."""
    if not config.train.merge:
        logger.info("pipeline: train.merge is false, but infer needs the merged model; merging anyway")
        config = config.model_copy(update={"train": config.train.model_copy(update={"merge": True})})
    run_train(config)
    return RunLayout(config.run_dir).train_merged


def manifest_numbers(layout: RunLayout) -> dict[str, Any]:
    summary = json.loads(layout.train_summary.read_text())
    return {"rows": summary["data"]["train_examples"], "tokens": summary["data"]["train_tokens"],
            "steps": summary["steps"], "final_eval_loss": summary.get("final_eval_loss")}


def run_fingerprint(train: TrainConfig, model_path: str, data: SftData, seed: int) -> str:
    """What decides the trained weights: the model, the tokenized data, the seed and the training fields."""
    digest = hashlib.sha256()
    for split in (data.train, data.valid):
        for example in split:
            digest.update(json.dumps([example.input_ids, example.labels]).encode())
    fields = decided_by(train)  # the fields marked as deciding content (`sefl_ray.config.train`)
    return config_fingerprint({"train": fields, "model": model_path, "data": digest.hexdigest(), "seed": seed})


def _finished(summary_path: Path, fingerprint: str, train: TrainConfig) -> bool:
    if not summary_path.exists():
        return False
    damage = unreadable_reason(summary_path)
    if damage is not None:  # cut short by a full disk, say: train again (it resumes from the last checkpoint)
        set_aside(summary_path, damage)
        return False
    summary = json.loads(summary_path.read_text())
    merged_ok = not train.merge or (summary_path.parent / "merged" / "config.json").exists()
    return summary.get("fingerprint") == fingerprint and summary.get("finished") and merged_ok


def _resolve_model(name: str) -> str:
    from sefl_ray.models import resolve_model

    return resolve_model(name)
