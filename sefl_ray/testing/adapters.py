"""Random-weight LoRA adapters for a local model folder, made offline in seconds: B is not zero (peft's
`init_lora_weights=False`), so a served adapter visibly changes the greedy output and a test can tell it was used."""

from __future__ import annotations

from pathlib import Path


def make_lora_adapters(model_dir: str | Path, out_dir: Path, names: list[str], rank: int = 4) -> dict[str, str]:
    """{name: adapter folder} under `out_dir`, one adapter per name, each from its own seed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = {}
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        lora = LoraConfig(r=rank, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(base, lora).save_pretrained(out_dir / name)
        paths[name] = str(out_dir / name)
    return paths
