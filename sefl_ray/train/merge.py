"""`sefl-ray merge`: a sharded training checkpoint -> one Hugging Face model folder that `from_pretrained` loads.

Runs in one process without a process group: DCP checkpoints (DDP, FSDP2) are read with `dcp.load`, DeepSpeed's
with its own `zero_to_fp32`. LoRA runs write the adapter folder (`adapter/`, loadable with peft) and the adapter
merged into the base weights (`merged/`). When the checkpoint holds the trained model's logits on a probe input,
the merged model's logits are compared with them and the largest difference is recorded: a merge that lost or
mixed up weights cannot pass silently.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import yaml

from sefl_ray.config import TrainConfig, redact_secrets
from sefl_ray.data.tables import read_jsonl
from sefl_ray.durable import replacing_folder, write_json, write_text
from sefl_ray.errors import InputNotFoundError, SeflError
from sefl_ray.layout import RunLayout
from sefl_ray.train.data import ensure_chat_template
from sefl_ray.train.loop import META_FILE, METRICS_FILE, PROBE_FILE, apply_lora
from sefl_ray.train.strategies import DEEPSPEED_TAG

logger = logging.getLogger(__name__)

MERGE_SUMMARY_FILE = "merge_summary.json"
# fp32 weights and an fp32 forward pass on both sides: anything above this is a wrong or missing weight.
PROBE_TOLERANCE_FP32 = 1e-4


class MergeMismatchError(SeflError):
    """The merged model does not reproduce the trained model's logits."""


class NonFiniteWeightsError(SeflError):
    """The checkpoint holds NaN or inf weights."""


def merge_run(run: str | Path, *, checkpoint: str | None = None, out_dir: str | Path | None = None) -> Path:
    """`sefl-ray merge`: RUN is a run dir (its last checkpoint, or `checkpoint` by name) or a checkpoint folder."""
    run = Path(run)
    if (run / META_FILE).exists():
        checkpoint_dir, default_out = run, run.parent
    else:
        summary_path = RunLayout(run).train_summary
        if not summary_path.exists():
            raise InputNotFoundError(f"{run} is neither a run dir with train/summary.json nor a checkpoint folder")
        try:
            last = Path(json.loads(summary_path.read_text())["checkpoint"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputNotFoundError(f"{summary_path} is unreadable ({type(exc).__name__}: {exc}): train again, or "
                                     "name a checkpoint folder") from None
        checkpoint_dir, default_out = _named_checkpoint(last, checkpoint), RunLayout(run).train_dir
    out_dir = Path(out_dir) if out_dir else default_out
    merge_checkpoint(checkpoint_dir, out_dir)
    return out_dir / "merged"


def _named_checkpoint(last: Path, name: str | None) -> Path:
    if name is None:
        return last
    if Path(name).is_dir():
        return Path(name)
    folder = last.parent / (f"step_{int(name):06d}" if name.isdigit() else name)
    if not folder.is_dir():
        kept = ", ".join(sorted(p.name for p in last.parent.glob("step_*"))) or "none"
        raise InputNotFoundError(f"no checkpoint '{name}' in {last.parent} (kept: {kept})")
    return folder


def merge_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, check_probe: bool = True) -> dict[str, Any]:
    """Merge `checkpoint` (a local folder or a `ray.train.Checkpoint` path) into OUT_DIR/merged (+ adapter)."""
    checkpoint_dir, out_dir = Path(checkpoint), Path(out_dir)
    if not (checkpoint_dir / META_FILE).exists():
        raise InputNotFoundError(f"{checkpoint_dir} is not a sefl-ray training checkpoint (no {META_FILE})")
    meta = json.loads((checkpoint_dir / META_FILE).read_text())
    train = TrainConfig.model_validate(meta["train"])

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(meta["model_path"])
    ensure_chat_template(tokenizer)
    saved_dtype = _dtype_of(AutoConfig.from_pretrained(meta["model_path"]))
    model = AutoModelForCausalLM.from_pretrained(meta["model_path"], dtype=torch.float32)
    if train.lora.enabled:
        model = apply_lora(model, train)
    load_trained_weights(model, checkpoint_dir, train)
    refuse_non_finite(model, checkpoint_dir)
    model.eval()

    probe_path = checkpoint_dir / PROBE_FILE
    probe = torch.load(probe_path, weights_only=True) if probe_path.exists() else None
    probe_diffs: dict[str, float] = {}
    merged_dir, adapter_dir = out_dir / "merged", out_dir / "adapter"
    # Both folders are built beside the old ones and swapped in only after the logit check passed: a merge that
    # fails it (or dies) leaves the previous merged model in place.
    with ExitStack() as outputs:
        merged_staging = outputs.enter_context(replacing_folder(merged_dir))
        if train.lora.enabled:
            adapter_staging = outputs.enter_context(replacing_folder(adapter_dir))
            if probe is not None:
                probe_diffs["adapter"] = _probe_diff(model, probe)
            model.save_pretrained(adapter_staging)
            tokenizer.save_pretrained(adapter_staging)
            model = model.merge_and_unload()
        if probe is not None:
            probe_diffs["merged"] = _probe_diff(model, probe)
        tolerance = PROBE_TOLERANCE_FP32 if train.precision != "bf16" else None
        if check_probe and tolerance is not None and any(not diff <= tolerance for diff in probe_diffs.values()):  # NaN fails too
            raise MergeMismatchError(
                f"merged weights of {checkpoint_dir} do not reproduce the trained logits (max abs diff "
                f"{probe_diffs}); the previous merged model, if any, is kept"
            )

        model.to(saved_dtype).save_pretrained(merged_staging)
        tokenizer.save_pretrained(merged_staging)
        _copy_generation_config(meta["model_path"], merged_staging)
        summary = {
            "checkpoint": str(checkpoint_dir), "step": meta.get("step"), "base_model": meta["model"],
            "lora": train.lora.enabled, "dtype": str(saved_dtype).removeprefix("torch."),
            "probe_max_abs_diff": probe_diffs or None,
        }
        write_json(merged_staging / MERGE_SUMMARY_FILE, summary)
        write_text(merged_staging / "README.md", render_model_card(meta, _read_metrics(checkpoint_dir), summary))
    if not train.lora.enabled:  # an adapter of an earlier LoRA run would no longer match merged/
        shutil.rmtree(adapter_dir, ignore_errors=True)
    logger.info("merged %s -> %s (probe max abs diff %s)", checkpoint_dir, merged_dir, probe_diffs or "n/a")
    return summary


def refuse_non_finite(model: torch.nn.Module, checkpoint_dir: Path) -> None:
    """A NaN or inf weight makes every answer garbage while the model still loads and serves: never write one."""
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise NonFiniteWeightsError(
            f"{checkpoint_dir} holds NaN or inf in {len(bad)} weight(s) (first: {bad[0]}): it was not merged; "
            "train again with a lower learning rate, or merge an earlier checkpoint (--checkpoint)"
        )


def load_trained_weights(model: torch.nn.Module, checkpoint_dir: Path, train: TrainConfig) -> None:
    """Copy the checkpoint's weights into `model` (every weight, or the adapters only for LoRA)."""
    expected = {
        name: tensor for name, tensor in model.state_dict().items()
        if not train.lora.enabled or "lora_" in name
    }
    if train.strategy == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        trained = get_fp32_state_dict_from_zero_checkpoint(
            str(checkpoint_dir), tag=DEEPSPEED_TAG, exclude_frozen_parameters=train.lora.enabled
        )
    else:
        import torch.distributed.checkpoint as dcp

        trained = {"model": {name: tensor.clone() for name, tensor in expected.items()}}
        dcp.load(trained, checkpoint_id=str(checkpoint_dir))
        trained = trained["model"]
    missing = sorted(set(expected) - set(trained))
    tied = {name for name in missing if name.endswith("lm_head.weight") and model.config.tie_word_embeddings}
    if set(missing) - tied:
        raise MergeMismatchError(f"{checkpoint_dir} lacks {len(missing)} weights, e.g. {missing[:3]}")
    model.load_state_dict({name: trained[name] for name in expected if name in trained}, strict=False)


def render_model_card(meta: dict[str, Any], metrics: list[dict[str, Any]], merge: dict[str, Any]) -> str:
    """A Hub model card: what the model was tuned from, on what data, how, and how it ended."""
    train = meta["train"]
    steps = [r for r in metrics if "loss" in r]
    evals = [r for r in metrics if r.get("eval_loss") is not None]
    is_hub_id = meta["model"].count("/") == 1 and not Path(meta["model"]).exists()
    front = {"base_model": meta["model"] if is_hub_id else None,
             "library_name": "transformers", "tags": ["sefl-ray", "educational-feedback", "sft"]
             + (["lora"] if train["lora"]["enabled"] else [])}
    front = {k: v for k, v in front.items() if v is not None}
    lora = f" + LoRA r={train['lora']['r']}" if train["lora"]["enabled"] else ""
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        "# Feedback model fine-tuned with sefl-ray", "",
        "Supervised fine-tuning on teacher feedback to student answers with deliberate mistakes "
        "(synthetic educational feedback loops, SEFL), trained with Ray Train.", "",
        "| | |", "| --- | --- |",
        f"| base model | `{meta['model']}` |",
        f"| dataset | `{meta['dataset']}` |",
        f"| run fingerprint | `{meta['fingerprint']}` |",
        f"| examples (train / valid) | {meta['data'].get('train_examples')} / {meta['data'].get('valid_examples')} |",
        f"| strategy | {train['strategy']}{lora} |",
        f"| steps | {merge['step']} |",
        f"| final train loss | {_fmt(steps[-1]['loss'] if steps else None)} |",
        f"| eval loss (first → last) | {_fmt(evals[0]['eval_loss'] if evals else None)} → "
        f"{_fmt(evals[-1]['eval_loss'] if evals else None)} |",
        f"| merge check (max abs logit diff) | {merge['probe_max_abs_diff']} |",
        "", "## Training config", "", "```yaml", yaml.safe_dump(redact_secrets(train), sort_keys=False).rstrip(), "```", "",
        "## Use", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("<this folder or repo>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")',
        "```", "",
        "Prompts follow SEFL's rendering: the user turn `### ASSIGNMENT:\\n…\\n\\n### ANSWER:\\n…`, "
        "the reply `### FEEDBACK: …`.", "",
    ]
    return "\n".join(lines)


def _probe_diff(model: torch.nn.Module, probe: dict[str, Any]) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([probe["input_ids"]])).logits.float()
    return float((logits - probe["logits"]).abs().max())


def _dtype_of(model_config) -> torch.dtype:
    dtype = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _copy_generation_config(model_path: str, merged_dir: Path) -> None:
    from transformers import GenerationConfig

    try:
        GenerationConfig.from_pretrained(model_path).save_pretrained(merged_dir)
    except OSError:
        logger.info("base model %s has no generation config; the merged folder has none either", model_path)


def _read_metrics(checkpoint_dir: Path) -> list[dict[str, Any]]:
    path = checkpoint_dir / METRICS_FILE
    return read_jsonl(path) if path.exists() else []


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
