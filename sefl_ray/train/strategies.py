"""How the model is spread over the workers: DDP, FSDP2 or DeepSpeed ZeRO, behind one small interface.

The training loop only calls `accumulate`, `backward`, `step`, `save` and `load`, so it reads the same for every
strategy. DDP and FSDP2 checkpoint with torch's distributed checkpoint (DCP: each rank writes its own shard file,
`__<rank>_0.distcp`, and rank 0 the `.metadata`); DeepSpeed writes its own per-rank files. Either way the files of
different ranks have different names, so Ray Train can gather every worker's upload into one checkpoint folder.
With LoRA only the trainable (adapter) weights are checkpointed: the base model is read again from its folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from sefl_ray.config import TrainConfig
from sefl_ray.durable import write_json

logger = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"
DEEPSPEED_TAG = "zero"


class Strategy:
    """Owns the wrapped model, its optimizer and LR schedule. Subclasses differ only in wrapping and saving."""

    module: torch.nn.Module

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-step's forward and backward; gradients are reduced only when `sync`."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> float:
        """Clip, step the optimizer and the schedule, zero the gradients; returns the gradient norm before clipping."""
        raise NotImplementedError

    def lr(self) -> float:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError


class TorchStrategy(Strategy):
    """DDP or FSDP2: a torch optimizer stepped by us, checkpoints through DCP."""

    def __init__(self, module: torch.nn.Module, train: TrainConfig, total_steps: int):
        self.module = module
        self.train = train
        self.optimizer = _adamw(module, train)
        self.scheduler = _scheduler(self.optimizer, train, total_steps)
        self._is_fsdp = train.strategy == "fsdp2"

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        if self._is_fsdp:
            self.module.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if sync else self.module.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, self.train.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(ignore_frozen_params=self.train.lora.enabled)
        model_state, optimizer_state = get_state_dict(self.module, self.optimizer, options=options)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))
        if dist.get_rank() == 0:
            torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")

    def load(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

        options = StateDictOptions(ignore_frozen_params=self.train.lora.enabled)
        model_state, optimizer_state = get_state_dict(self.module, self.optimizer, options=options)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(directory))
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=options)
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))


class DeepSpeedStrategy(Strategy):
    """ZeRO-2/3. DeepSpeed owns accumulation (its `gradient_accumulation_steps`), clipping and the LR schedule."""

    def __init__(
        self, module: torch.nn.Module, train: TrainConfig, total_steps: int, precision: str, device: torch.device
    ):
        import deepspeed

        if device.type == "cpu":
            # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (about a minute with ninja and a C++
            # compiler) that only its inference path uses; marking it incompatible skips the build, nothing else.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.train = train
        optimizer = _adamw(module, train)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=_scheduler(optimizer, train, total_steps),
            config=deepspeed_config(train, precision),
            dist_init_required=False,
        )
        self.module = self.engine

    def backward(self, loss: torch.Tensor) -> None:
        # Our loss is already divided for accumulation; DeepSpeed must not divide it again.
        self.engine.backward(loss, scale_wrt_gas=False)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()  # a micro-step: DeepSpeed only counts it

    def step(self) -> float:
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        return float(grad_norm) if grad_norm is not None else float("nan")

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(
            str(directory), tag=DEEPSPEED_TAG, exclude_frozen_parameters=self.train.lora.enabled
        )

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(
            str(directory), tag=DEEPSPEED_TAG, load_module_strict=not self.train.lora.enabled
        )


def build_strategy(
    model: torch.nn.Module, train: TrainConfig, *, device: torch.device, precision: str, total_steps: int
) -> Strategy:
    if train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train.strategy == "deepspeed":
        return DeepSpeedStrategy(model, train, total_steps, precision, device)
    if train.strategy == "fsdp2":
        return TorchStrategy(_shard_fsdp2(model, train, device, precision), train, total_steps)
    model.to(device)
    device_ids = [device.index] if device.type == "cuda" else None
    return TorchStrategy(torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids), train, total_steps)


def _shard_fsdp2(model: torch.nn.Module, train: TrainConfig, device: torch.device, precision: str) -> torch.nn.Module:
    """`fully_shard` each decoder layer, then the root (embeddings, norm, head), torchtune's layout."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"reshard_after_forward": train.fsdp.reshard_after_forward, "mesh": mesh}
    if precision == "bf16":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if train.fsdp.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    # The model stays where it was loaded (CPU): `fully_shard` moves each layer to the mesh's device as it shards
    # it, so a GPU never holds more than one unsharded layer at a time.
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks, found by the class names transformers lists as never to be split across devices."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [module for module in model.modules() if type(module).__name__ in block_names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(base).__name__} to shard")
    return layers


def deepspeed_config(train: TrainConfig, precision: str) -> dict[str, Any]:
    """Our section as a DeepSpeed config, or the user's JSON with its 'auto' and missing fields filled from it."""
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.max_grad_norm,
        "bf16": {"enabled": precision == "bf16"},
        "zero_optimization": {"stage": train.deepspeed.zero_stage},
        "zero_force_ds_cpu_optimizer": False,  # we pass torch's AdamW; DeepSpeed refuses it with offload otherwise
        "steps_per_print": 10**9,
    }
    zero = ours["zero_optimization"]
    if train.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if train.deepspeed.offload_params and train.deepspeed.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    if train.deepspeed.config_file is None:
        return ours
    user = json.loads(Path(train.deepspeed.config_file).read_text())
    for key, value in ours.items():
        if user.get(key, "auto") == "auto":
            user[key] = value
    user.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch x accumulation x world size
    return user


def _adamw(module: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    trainable = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay, betas=(0.9, 0.95))


def _scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = "constant_with_warmup" if train.lr_scheduler == "constant" else train.lr_scheduler
    return get_scheduler(
        name, optimizer, num_warmup_steps=int(train.warmup_ratio * total_steps), num_training_steps=total_steps
    )


def write_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    write_json(directory / TRAINER_STATE_FILE, state)


def read_trainer_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / TRAINER_STATE_FILE).read_text())


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train()
