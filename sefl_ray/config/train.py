"""Sections of `sefl-ray train`: the model, data, strategy (DDP, FSDP2, DeepSpeed ZeRO), LoRA and the run."""

from __future__ import annotations

from typing import Literal

from sefl_ray.config.schema import Field, StrictModel


class LoraSettings(StrictModel):
    enabled: bool = Field(False, description="Train a LoRA adapter (peft) instead of every weight.", decides="content")
    r: int = Field(16, ge=1, description="LoRA rank.", decides="content")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).", decides="content")
    dropout: float = Field(0.05, ge=0, lt=1, decides="content")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters (Llama/Qwen names by default), or 'all-linear'.", decides="content",
    )


class FsdpSettings(StrictModel):
    cpu_offload: bool = Field(False, description="Keep sharded parameters and optimizer state in CPU memory.", decides="content")
    reshard_after_forward: bool = Field(
        True, description="Free gathered parameters after forward (ZeRO-3-like); False keeps them (ZeRO-2-like).", decides="content"
    )


class DeepSpeedSettings(StrictModel):
    zero_stage: Literal[2, 3] = Field(3, description="ZeRO stage: 2 shards optimizer and gradients, 3 also weights.", decides="content")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state and step on the CPU.", decides="content")
    offload_params: bool = Field(False, description="ZeRO-3 only: parameters on the CPU between uses.", decides="content")
    config_file: str | None = Field(
        None, description="A DeepSpeed JSON of your own; batch sizes, precision and clipping are filled from this "
        "section where the file says 'auto' or omits them.", decides="content"
    )


class TrainConfig(StrictModel):
    """Supervised fine-tuning of a causal LM on feedback pairs with Ray Train."""

    model: str = Field(
        "embedded:smollm2-135m", description="Base model: 'embedded:<name>', a local HF folder, or a Hub id.", decides="content"
    )
    dataset: str | None = Field(
        None, description="Training data: our export folder or its `hf` folder, any `datasets` folder, .parquet or "
        ".jsonl with SEFL's columns (`prompt`/`completion`) or a `messages` column; None: RUN_DIR/export/hf.", decides="content"
    )
    train_split: str = Field("train", description="Split to train on when `dataset` is a DatasetDict.", decides="content")
    valid_split: str | None = Field(
        "valid", description="Held-out split for eval loss; when missing, `valid_fraction` of train is held out.", decides="content"
    )
    valid_fraction: float = Field(0.1, ge=0, lt=1, description="Held-out share when the data has no valid split.", decides="content")
    max_seq_len: int = Field(1024, ge=16, description="Longer examples are cut at this length; one left with no feedback tokens is dropped.", decides="content")
    packing: bool = Field(
        True, description="Pack short examples into full sequences; attention stays within each example.", decides="content"
    )
    attn_implementation: str = Field(
        "per_example_sdpa", description="Attention kernel in training: 'per_example_sdpa' runs causal sdpa on each "
        "packed example alone (sefl_ray.train.attention); or any transformers name: 'sdpa' (block-diagonal mask), "
        "'flash_attention_2', 'eager'.", decides="content"
    )
    strategy: Literal["ddp", "fsdp2", "deepspeed"] = Field("ddp", description="How the model is spread over workers.", decides="content")
    fsdp: FsdpSettings = Field(default_factory=FsdpSettings, decides="content")
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings, decides="content")
    lora: LoraSettings = Field(default_factory=LoraSettings, decides="content")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="'auto': bf16 mixed precision where the device supports it, else fp32.", decides="content"
    )
    activation_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.", decides="execution")
    epochs: int = Field(1, ge=1, decides="content")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (None: epochs).", decides="content")
    batch_size: int = Field(
        1, ge=1, description="Sequences per worker per micro-step (each `max_seq_len` tokens long when packing).", decides="content"
    )
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.", decides="content")
    lr: float = Field(2e-5, gt=0, description="Peak learning rate (use ~1e-4..2e-4 with LoRA).", decides="content")
    weight_decay: float = Field(0.0, ge=0, decides="content")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, decides="content")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", decides="content")
    max_grad_norm: float = Field(1.0, gt=0, decides="content")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU on a GPU cluster).", decides="content")
    use_gpu: bool = Field(False, description="One GPU per worker (CUDA or ROCm).", decides="content")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.", decides="execution")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the workers: SPREAD puts them on different nodes where it can.", decides="execution"
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Collective backend: 'auto' is nccl with GPUs (RCCL on ROCm builds), gloo on CPU.", decides="execution"
    )
    storage_path: str | None = Field(
        None, description="Where Ray Train keeps checkpoints: a shared path or s3://…; None: RUN_DIR/train/ray.", decides="execution"
    )
    checkpoint_every_steps: int = Field(50, ge=1, description="Sharded checkpoint every N optimizer steps (and at end).", decides="execution")
    num_checkpoints_to_keep: int = Field(2, ge=1, decides="execution")
    max_failures: int = Field(1, ge=0, description="Worker failures tolerated; each restarts from the last checkpoint.", decides="execution")
    eval_at_start: bool = Field(True, description="Measure eval loss before the first step, as the baseline.", decides="execution")
    log_every_steps: int = Field(1, ge=1, decides="execution")
    merge: bool = Field(True, description="Merge the last checkpoint into RUN_DIR/train/merged when training ends.", decides="execution")


