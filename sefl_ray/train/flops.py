"""Model FLOPs utilization: the FLOPs a step needs by the model's shape, over what the device could do at peak.

FLOPs per token follow the PaLM appendix: 2N forward and 4N backward for the N non-embedding weights, plus
attention (12 · layers · hidden · context). With LoRA the frozen weights get no weight gradients, so backward is 2N
(the adapters' own FLOPs are negligible). Peaks are dense bf16 tensor-core figures from the vendors' data sheets,
per device as torch sees it (one MI250X is two devices). On CPU MFU is not defined: we report tokens/s only.
"""

from __future__ import annotations

import torch

# Substring of torch.cuda.get_device_name() -> dense bf16 peak FLOP/s. Longest match wins (e.g. "H100 PCIe").
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "MI300X": 1307e12,
    "MI325X": 1307e12,
    "MI250X": 191.5e12,  # per GCD: torch sees each of the two dies as a device
    "MI250": 181e12,
    "MI210": 181e12,
}


def peak_flops_per_device(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def peak_flops_for_name(device_name: str) -> float | None:
    matches = [name for name in PEAK_BF16_FLOPS if name.lower() in device_name.lower()]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def flops_per_token(model_config, *, context_len: int, lora: bool) -> float:
    """Training FLOPs per token of a decoder-only transformer with this HF config."""
    hidden = model_config.hidden_size
    layers = model_config.num_hidden_layers
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    intermediate = model_config.intermediate_size
    attention_weights = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    mlp_weights = 3 * hidden * intermediate  # gated MLP (Llama, Qwen, Mistral): gate, up, down
    non_embedding = layers * (attention_weights + mlp_weights) + hidden * model_config.vocab_size  # + LM head
    weight_passes = 4 if lora else 6
    return weight_passes * non_embedding + 12 * layers * heads * head_dim * context_len


def mfu(tokens_per_second: float, flops_per_token_value: float, peak_flops: float | None) -> float | None:
    if not peak_flops:
        return None
    return tokens_per_second * flops_per_token_value / peak_flops
