"""Attention for training batches that computes each example on its own: the cost of its length, not of the row's.

transformers reads a packed row (position ids restarting at 0 for each example) as packed sequences and builds a
block-diagonal causal mask for sdpa. The mask keeps the examples apart, but sdpa with a mask computes every query
against every key of the row: a 1024-token row of three examples costs the attention of one 1024-token sequence,
three times the sum of its parts, and without the causal half skipped. `per_example_sdpa` cuts the row where the
positions restart and runs sdpa with `is_causal=True` (no mask: the kernel skips the upper triangle) on each piece,
the CPU and GPU equivalent of flash-attention's variable-length kernels.

It registers no mask function, so transformers passes no mask: padded batches must be right-padded (ours are), where
causal attention already keeps every real token from seeing the padding after it.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from sefl_ray.errors import ConfigError

PER_EXAMPLE_SDPA = "per_example_sdpa"


def register_per_example_sdpa() -> None:
    """Make `attn_implementation=PER_EXAMPLE_SDPA` loadable in this process (each Ray worker calls it)."""
    AttentionInterface.register(PER_EXAMPLE_SDPA, per_example_sdpa)


def per_example_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal sdpa per example of each row; returns (batch, tokens, heads, head_dim) like transformers' sdpa."""
    if attention_mask is not None:
        raise ValueError(f"{PER_EXAMPLE_SDPA} takes no attention mask; pad on the right and let causality mask it")
    batch, length = query.shape[0], query.shape[2]
    row_segments = example_segments(position_ids, batch, length)

    def attend(row: slice, start: int, end: int) -> torch.Tensor:
        output, _ = sdpa_attention_forward(
            module, query[row, :, start:end], key[row, :, start:end], value[row, :, start:end], None,
            dropout=dropout, scaling=scaling, is_causal=True,
        )
        return output

    if all(segments == [(0, length)] for segments in row_segments):  # nothing packed: one call for the batch
        return attend(slice(None), 0, length), None
    rows = [
        torch.cat([attend(slice(b, b + 1), start, end) for start, end in segments], dim=1)
        for b, segments in enumerate(row_segments)
    ]
    return torch.cat(rows, dim=0), None


def example_segments(position_ids: torch.Tensor | None, batch: int, length: int) -> list[list[tuple[int, int]]]:
    """[(start, end), ...] per row: a new example starts wherever the position does not follow the previous one."""
    if position_ids is None or length == 1:
        return [[(0, length)]] * batch
    ids = position_ids.expand(batch, -1)
    breaks = torch.diff(ids, dim=-1) != 1
    # one transfer for the whole batch (a GPU sync), then plain Python
    starts_per_row: list[list[int]] = [[] for _ in range(batch)]
    for row, column in breaks.nonzero().tolist():
        starts_per_row[row].append(column + 1)
    return [list(zip([0, *starts], [*starts, length])) for starts in starts_per_row]


def check_examples_stay_apart(model: torch.nn.Module) -> None:
    """Packing is only right if the model's attention keeps examples apart. Not every architecture hands the position
    ids to its attention, so one tiny forward proves it: the same 8 tokens twice in one row, positions restarting,
    must give the same logits both times."""
    tokens = torch.arange(8) % model.config.vocab_size
    inputs = {"input_ids": tokens.repeat(2).unsqueeze(0), "position_ids": torch.arange(8).repeat(2).unsqueeze(0)}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits[0].float()
    model.train(was_training)
    if not torch.allclose(logits[:8], logits[8:], atol=1e-4, rtol=1e-3):
        raise ConfigError(
            f"train.packing: {type(model).__name__} with attn_implementation="
            f"{model.config._attn_implementation!r} lets packed examples attend to each other; set "
            "train.packing=false or another train.attn_implementation"
        )
