"""A random-weight causal LM with a real chat tokenizer, built offline in a second, so unit tests never need a download.

`build_tiny_model(out_dir)` writes a folder that plain `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load: safetensors weights, a byte-level BPE tokenizer trained on a built-in corpus,
a ChatML chat template whose assistant turns sit in a `{% generation %}` block (so
`apply_chat_template(..., return_assistant_tokens_mask=True)` works), and a generation config that stops at
`<|im_end|>`. The same seed gives the same tokenizer and the same weights.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
# Ids 0..3 in this order, the same layout as SmolLM2 (plus a pad token of its own, so tests catch pad/eos mix-ups).
SPECIAL_TOKENS = [BOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN, PAD_TOKEN]

# ChatML. The assistant's content and its closing <|im_end|> are the generation block: that is what SFT trains on,
# and the model has to learn to emit <|im_end|> to stop.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}

NUM_ATTENTION_HEADS = 4
NUM_KEY_VALUE_HEADS = 2
INTERMEDIATE_SIZE = 128
MAX_POSITION_EMBEDDINGS = 512


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Build a tiny random-weight chat model and its tokenizer into `out_dir`; return the folder."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    if hidden_size % (2 * NUM_ATTENTION_HEADS) != 0:
        raise ValueError(f"hidden_size must be a multiple of {2 * NUM_ATTENTION_HEADS}, got {hidden_size}")
    model_dir = Path(out_dir)
    model_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tiny_tokenizer(vocab_size)
    model = _build_random_model(arch, tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)

    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    logger.info("built a tiny %s model (%d parameters) in %s", arch, model.num_parameters(), model_dir)
    return model_dir


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus and dress it as a ChatML chat tokenizer."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus_lines(), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS_TOKEN,
        eos_token=IM_END_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START_TOKEN],
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _build_random_model(
    arch: str, tokenizer: PreTrainedTokenizerFast, *, hidden_size: int, num_layers: int, seed: int
) -> LlamaForCausalLM | Qwen2ForCausalLM:
    config_class, model_class = ARCHITECTURES[arch]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=num_layers,
        num_attention_heads=NUM_ATTENTION_HEADS,
        num_key_value_heads=NUM_KEY_VALUE_HEADS,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed a forked RNG so building a model leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval()


_SUBJECTS = ["the student", "the teacher", "my classmate", "the tutor", "our group", "the reviewer", "she", "he"]
_VERBS = ["wrote", "checked", "solved", "explained", "graded", "rewrote", "submitted", "corrected"]
_OBJECTS = [
    "the assignment", "the essay", "the proof", "the equation", "the answer", "the fraction problem",
    "the summary", "the lab report", "the derivative", "the word problem", "the algorithm", "the paragraph",
]
_DETAILS = [
    "but forgot to show the steps", "and the result was correct", "with a small sign error",
    "without citing the source", "after reading the feedback", "in less than an hour",
    "and added a clear conclusion", "but mixed up the units", "using a diagram", "twice before the deadline",
]
_FEEDBACK = [
    "Good work, but check step {n} again.",
    "You added {a} and {b} to get {c}, which is {verdict}.",
    "The thesis is clear; the second paragraph needs evidence.",
    "Explain why {a} times {b} equals {c} before moving on.",
    "Try to simplify the fraction {a}/{b} first.",
    "Your answer {c} is {verdict}; show how you got it.",
]


def _corpus_lines() -> list[str]:
    """A few hundred English-ish lines about assignments, feedback and arithmetic, in a fixed order."""
    lines = []
    for i, (subject, verb, obj, detail) in enumerate(itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _DETAILS)):
        if i % 7 == 0:
            lines.append(f"{subject.capitalize()} {verb} {obj} {detail}.")
    for n, template in enumerate(_FEEDBACK * 40):
        a, b = n % 13 + 1, n % 7 + 2
        c = a * b if "times" in template else a + b + (n % 3 == 0)
        verdict = "correct" if (n % 3) else "not quite right"
        lines.append(template.format(n=n % 5 + 1, a=a, b=b, c=c, verdict=verdict))
    lines += ["### ASSIGNMENT:", "### ANSWER:", "### FEEDBACK:", "system", "user", "assistant"] * 10
    return lines
