"""SFT examples from a dataset on disk: chat messages -> token ids with loss only on the assistant's turns.

The driver tokenizes once (`load_sft_examples`); workers only batch. Batching is a pure function of (examples, seed,
epoch, rank), so a restarted worker rebuilds exactly the batches it had and resumes at the same data position.

Two batch layouts:
- padded: each micro-batch padded to its longest example, with an attention mask;
- packed: examples laid end to end in rows of `max_seq_len` tokens with `position_ids` restarting at 0 for each
  example and no attention mask. Our default attention (`sefl_ray.train.attention`, `per_example_sdpa`) cuts the row
  where the positions restart and attends within each piece; transformers' own kernels read restarting positions the
  same way (a block-diagonal mask for sdpa and eager without a KV cache, so training sets `use_cache=False`;
  variable-length kernels for flash-attention). Either way no token attends across examples.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sefl_ray.data.sft import DEFAULT_SYSTEM_PROMPT
from sefl_ray.data.tables import read_rows
from sefl_ray.errors import ConfigError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
PACKED_WIDTH_MULTIPLE = 64  # packed rows are cut to a multiple of this: few distinct shapes, GPU-friendly sizes
VALID_SPLIT_NAMES = ("valid", "validation", "test")

# For base models without a chat template: ChatML, the format most instruct models and our tiny test model use.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class SftExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken


@dataclass
class SftData:
    train: list[SftExample]
    valid: list[SftExample]
    stats: dict[str, Any]


def load_sft_examples(
    dataset: str | Path,
    tokenizer,
    *,
    max_seq_len: int,
    train_split: str = "train",
    valid_split: str | None = "valid",
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> SftData:
    """Read rows, turn each into chat messages, tokenize, and split train/valid (the data's own split if any)."""
    train_rows, valid_rows = _read_splits(Path(dataset), train_split, valid_split)
    if valid_rows is None:
        train_rows, valid_rows = _hold_out(train_rows, valid_fraction, seed)
    ensure_chat_template(tokenizer)
    stats: dict[str, Any] = {"truncated": 0, "dropped_no_loss_tokens": 0}
    train = _tokenize_rows(train_rows, tokenizer, max_seq_len, stats)
    valid = _tokenize_rows(valid_rows, tokenizer, max_seq_len, stats)
    if not train:
        raise ConfigError(f"train.dataset: {dataset} yields no training examples with feedback to learn from")
    stats.update(
        train_examples=len(train), valid_examples=len(valid),
        train_tokens=sum(len(e.input_ids) for e in train),
        train_loss_tokens=sum(sum(1 for label in e.labels if label != IGNORE_INDEX) for e in train),
    )
    logger.info("SFT data from %s: %s", dataset, stats)
    return SftData(train=train, valid=valid, stats=stats)


def ensure_chat_template(tokenizer) -> None:
    """Give a base model's tokenizer the fallback template, so merged models carry the format they were trained on."""
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("the tokenizer has no chat template: using ChatML (<|im_start|>role ... <|im_end|>)")
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def row_to_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """`messages` as given (SEFL's and ours), else `prompt` + `completion` (SEFL's rendering) with our system prompt."""
    messages = row.get("messages")
    if messages:
        return [{"role": m["role"], "content": m["content"] or ""} for m in messages]
    if row.get("prompt") is not None and row.get("completion") is not None:
        return [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
    raise ConfigError(
        f"train.dataset: a row has neither `messages` nor `prompt` + `completion` (its columns: {', '.join(row)})"
    )


def tokenize_messages(messages: list[dict[str, str]], tokenizer, max_seq_len: int) -> tuple[SftExample, bool]:
    """Token ids of the rendered chat and labels that cover every assistant turn (content and end-of-turn token).

    Assistant spans (up to the end-of-turn token, not the whitespace after it) are found in characters, by
    rendering each prefix of the conversation, and mapped to tokens
    through the tokenizer's offsets, so it works for any template whose rendering of a prefix is a prefix of the
    whole (true of the common ones), without `{% generation %}` markers. Returns (example, was_truncated).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not text.startswith(through) or not through.startswith(before):
            raise ConfigError(
                "train: the tokenizer's chat template renders a conversation's prefix differently from the whole "
                "conversation, so the assistant's tokens cannot be located; use a model with a standard template"
            )
        spans.append((len(before), len(through.rstrip())))  # not the newline a template puts after end-of-turn
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [
        token if any(start <= char_start < end for start, end in spans) else IGNORE_INDEX
        for token, (char_start, _) in zip(input_ids, encoded["offset_mapping"])
    ]
    truncated = len(input_ids) > max_seq_len
    return SftExample(input_ids[:max_seq_len], labels[:max_seq_len]), truncated


def micro_batches(
    examples: list[SftExample],
    *,
    batch_size: int,
    max_seq_len: int,
    packing: bool,
    pad_token_id: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    shuffle: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches for one epoch: the same on every call with the same arguments.

    Every rank gets the same number of micro-batches (collectives need it); the few rows that do not divide evenly
    are left out of this epoch (another set next epoch, as the shuffle changes).
    """
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    rows = _pack(examples, order, max_seq_len) if packing else [[i] for i in order]
    per_rank = len(rows) // world_size // batch_size * batch_size
    mine = rows[rank * per_rank: (rank + 1) * per_rank]
    collate = _collate_packed if packing else _collate_padded
    return [
        collate([[examples[i] for i in row] for row in mine[start: start + batch_size]], pad_token_id, max_seq_len)
        for start in range(0, per_rank, batch_size)
    ]


def count_rows(examples: list[SftExample], *, max_seq_len: int, packing: bool) -> int:
    """How many sequences (packed rows or examples) one epoch has, for planning steps before training."""
    return len(_pack(examples, list(range(len(examples))), max_seq_len)) if packing else len(examples)


def _pack(examples: list[SftExample], order: list[int], max_seq_len: int) -> list[list[int]]:
    """First-fit packing in the given order: each example goes into the first row with room for it."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        length = len(examples[index].input_ids)
        for row_index, free in enumerate(room):
            if length <= free:
                rows[row_index].append(index)
                room[row_index] -= length
                break
        else:
            rows.append([index])
            room.append(max_seq_len - length)
    return rows


def _collate_padded(batch: list[list[SftExample]], pad_token_id: int, max_seq_len: int) -> dict[str, torch.Tensor]:
    flat = [row[0] for row in batch]
    width = max(len(e.input_ids) for e in flat)
    input_ids = torch.full((len(flat), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(flat), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(flat), width), dtype=torch.long)
    for i, example in enumerate(flat):
        n = len(example.input_ids)
        input_ids[i, :n] = torch.tensor(example.input_ids)
        labels[i, :n] = torch.tensor(example.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _collate_packed(batch: list[list[SftExample]], pad_token_id: int, max_seq_len: int) -> dict[str, torch.Tensor]:
    """Rows of packed examples, as wide as the fullest row rounded up to PACKED_WIDTH_MULTIPLE (never more than
    `max_seq_len`): a pad tail is computed like real tokens, so it is kept short. The tail is one more 'example'
    of pad tokens without loss."""
    used = max(sum(len(example.input_ids) for example in row) for row in batch)
    width = min(max_seq_len, -(-used // PACKED_WIDTH_MULTIPLE) * PACKED_WIDTH_MULTIPLE)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(batch), width), dtype=torch.long)
    real_tokens = torch.zeros((len(batch),), dtype=torch.long)
    for i, row in enumerate(batch):
        offset = 0
        for example in row:
            n = len(example.input_ids)
            input_ids[i, offset: offset + n] = torch.tensor(example.input_ids)
            labels[i, offset: offset + n] = torch.tensor(example.labels)
            position_ids[i, offset: offset + n] = torch.arange(n)
            offset += n
        position_ids[i, offset:] = torch.arange(width - offset)
        real_tokens[i] = offset
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "real_tokens": real_tokens}


def real_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens of actual examples in a micro-batch (padding excluded): what tokens/s counts."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["real_tokens"].sum())


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "position_ids")
    return {key: batch[key].to(device, non_blocking=True) for key in keys if key in batch}


def _read_splits(
    path: Path, train_split: str, valid_split: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(train rows, valid rows or None). An export folder is read through its `hf` DatasetDict."""
    if path.is_dir() and (path / "hf").is_dir():
        path = path / "hf"
    if path.is_dir() and (path / "dataset_dict.json").exists():
        import datasets

        splits = list(datasets.load_from_disk(str(path)))
        train_rows = read_rows(path, key="train.dataset", split=train_split, allow_empty=False)
        candidates = [valid_split] if valid_split else []
        candidates += [name for name in VALID_SPLIT_NAMES if name not in candidates]
        for name in candidates:
            if name in splits and name != train_split:
                return train_rows, read_rows(path, key="train.dataset", split=name)
        return train_rows, None
    return read_rows(path, key="train.dataset", allow_empty=False), None


def _hold_out(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    if fraction == 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(rows) * fraction))
    valid_ids = set(order[:n_valid])
    return [r for i, r in enumerate(rows) if i not in valid_ids], [r for i, r in enumerate(rows) if i in valid_ids]


def _tokenize_rows(rows: list[dict[str, Any]], tokenizer, max_seq_len: int, stats: dict[str, Any]) -> list[SftExample]:
    examples = []
    for row in rows:
        example, truncated = tokenize_messages(row_to_messages(row), tokenizer, max_seq_len)
        stats["truncated"] += int(truncated)
        if all(label == IGNORE_INDEX for label in example.labels):
            stats["dropped_no_loss_tokens"] += 1
            continue
        examples.append(example)
    return examples
