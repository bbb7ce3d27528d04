"""Sections of `sefl-ray train`: the model, data, strategy (DDP, FSDP2, DeepSpeed ZeRO), LoRA and the run."""

from __future__ import annotations

from typing import Literal

from sefl_ray.config.schema import Field, StrictModel


class LoraSettings(StrictModel):
    enabled: bool = Field(False, decides="content", description="Train a LoRA adapter (peft) instead of every weight.")
    r: int = Field(16, decides="content", ge=1, description="LoRA rank.")
    alpha: int = Field(32, decides="content", ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, decides="content", ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        decides="content",
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters (Llama/Qwen names by default), or 'all-linear'.",
    )


class FsdpSettings(StrictModel):
    cpu_offload: bool = Field(
        False, decides="content",
        description="Keep sharded parameters and optimizer state in CPU memory.",
    )
    reshard_after_forward: bool = Field(
        True, decides="content",
        description="Free gathered parameters after forward (ZeRO-3-like); False keeps them (ZeRO-2-like).",
    )


class DeepSpeedSettings(StrictModel):
    zero_stage: Literal[2, 3] = Field(
        3, decides="content",
        description="ZeRO stage: 2 shards optimizer and gradients, 3 also weights.",
    )
    offload_optimizer: bool = Field(
        False, decides="content",
        description="ZeRO-Offload: optimizer state and step on the CPU.",
    )
    offload_params: bool = Field(
        False, decides="content",
        description="ZeRO-3 only: parameters on the CPU between uses.",
    )
    config_file: str | None = Field(
        None, decides="content",
        description="A DeepSpeed JSON of your own; batch sizes, precision and clipping are filled from this "
        "section where the file says 'auto' or omits them.",
    )


class TrainConfig(StrictModel):
    """Supervised fine-tuning of a causal LM on feedback pairs with Ray Train."""

    model: str = Field(
        "embedded:smollm2-135m", decides="content",
        description="Base model: 'embedded:<name>', a local HF folder, or a Hub id.",
    )
    dataset: str | None = Field(
        None, decides="content",
        description="Training data: our export folder or its `hf` folder, any `datasets` folder, .parquet or "
        ".jsonl with SEFL's columns (`prompt`/`completion`) or a `messages` column; None: RUN_DIR/export/hf.",
    )
    train_split: str = Field(
        "train", decides="content",
        description="Split to train on when `dataset` is a DatasetDict.",
    )
    valid_split: str | None = Field(
        "valid", decides="content",
        description="Held-out split for eval loss; when missing, `valid_fraction` of train is held out.",
    )
    valid_fraction: float = Field(
        0.1, decides="content", ge=0, lt=1,
        description="Held-out share when the data has no valid split.",
    )
    max_seq_len: int = Field(
        1024, decides="content", ge=16,
        description="Longer examples are cut at this length; one left with no feedback tokens is dropped.",
    )
    packing: bool = Field(
        True, decides="content",
        description="Pack short examples into full sequences; attention stays within each example.",
    )
    attn_implementation: str = Field(
        "per_example_sdpa", decides="content",
        description="Attention kernel in training: 'per_example_sdpa' runs causal sdpa on each "
        "packed example alone (sefl_ray.train.attention); or any transformers name: 'sdpa' (block-diagonal mask), "
        "'flash_attention_2', 'eager'.",
    )
    strategy: Literal["ddp", "fsdp2", "deepspeed"] = Field(
        "ddp", decides="content",
        description="How the model is spread over workers.",
    )
    fsdp: FsdpSettings = Field(decides="content", default_factory=FsdpSettings)
    deepspeed: DeepSpeedSettings = Field(decides="content", default_factory=DeepSpeedSettings)
    lora: LoraSettings = Field(decides="content", default_factory=LoraSettings)
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", decides="content",
        description="'auto': bf16 mixed precision where the device supports it, else fp32.",
    )
    activation_checkpointing: bool = Field(
        False, decides="execution",
        description="Recompute activations in backward to save memory.",
    )
    epochs: int = Field(1, decides="content", ge=1)
    max_steps: int | None = Field(
        None, decides="content", ge=1,
        description="Stop after this many optimizer steps (None: epochs).",
    )
    batch_size: int = Field(
        1, decides="content", ge=1,
        description="Sequences per worker per micro-step (each `max_seq_len` tokens long when packing).",
    )
    grad_accum: int = Field(1, decides="content", ge=1, description="Micro-steps per optimizer step.")
    lr: float = Field(2e-5, decides="content", gt=0, description="Peak learning rate (use ~1e-4..2e-4 with LoRA).")
    weight_decay: float = Field(0.0, decides="content", ge=0)
    warmup_ratio: float = Field(0.03, decides="content", ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", decides="content")
    max_grad_norm: float = Field(1.0, decides="content", gt=0)
    num_workers: int = Field(
        1, decides="content", ge=1,
        description="Ray Train workers (one per GPU on a GPU cluster).",
    )
    use_gpu: bool = Field(False, decides="content", description="One GPU per worker (CUDA or ROCm).")
    cpus_per_worker: float = Field(1, decides="execution", gt=0, description="CPUs reserved per worker.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", decides="execution",
        description="Ray placement of the workers: SPREAD puts them on different nodes where it can.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", decides="execution",
        description="Collective backend: 'auto' is nccl with GPUs (RCCL on ROCm builds), gloo on CPU.",
    )
    storage_path: str | None = Field(
        None, decides="execution",
        description="Where Ray Train keeps checkpoints: a shared path or s3://…; None: RUN_DIR/train/ray.",
    )
    checkpoint_every_steps: int = Field(
        50, decides="execution", ge=1,
        description="Sharded checkpoint every N optimizer steps (and at end).",
    )
    num_checkpoints_to_keep: int = Field(2, decides="execution", ge=1)
    max_failures: int = Field(
        1, decides="execution", ge=0,
        description="Worker failures tolerated; each restarts from the last checkpoint.",
    )
    eval_at_start: bool = Field(
        True, decides="execution",
        description="Measure eval loss before the first step, as the baseline.",
    )
    log_every_steps: int = Field(1, decides="execution", ge=1)
    merge: bool = Field(
        True, decides="execution",
        description="Merge the last checkpoint into RUN_DIR/train/merged when training ends.",
    )


