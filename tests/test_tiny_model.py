"""The tiny test model: builds fast, reloads with plain transformers, chat template and assistant mask are right."""

import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sefl_ray.testing.tiny_model import build_tiny_model

CONVERSATION = [
    {"role": "system", "content": "You give feedback on math homework."},
    {"role": "user", "content": "### ASSIGNMENT:\nAdd 2 and 3.\n\n### ANSWER:\n6"},
    {"role": "assistant", "content": "### FEEDBACK: 2 + 3 is 5, not 6; count again."},
]


def test_build_is_fast_and_writes_a_plain_hf_folder(tmp_path):
    started = time.monotonic()
    model_dir = build_tiny_model(tmp_path / "model")
    assert time.monotonic() - started < 5
    for filename in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (model_dir / filename).is_file()


def test_reloads_with_plain_from_pretrained(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size <= 64
    assert model.config.num_hidden_layers == 2
    assert model.config.tie_word_embeddings is False
    assert model.config.vocab_size == len(tiny_tokenizer) == 512
    im_end_id = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tiny_tokenizer.eos_token_id == im_end_id
    assert model.generation_config.eos_token_id == im_end_id
    assert model.generation_config.pad_token_id == tiny_tokenizer.pad_token_id != im_end_id


def test_qwen2_arch(tmp_path):
    model_dir = build_tiny_model(tmp_path, arch="qwen2", hidden_size=32)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.hidden_size == 32


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="llama"):
        build_tiny_model(tmp_path, arch="gpt9")


def test_chat_template_renders_chatml(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou give feedback on math homework.<|im_end|>\n"
        "<|im_start|>user\n### ASSIGNMENT:\nAdd 2 and 3.\n\n### ANSWER:\n6<|im_end|>\n"
        "<|im_start|>assistant\n### FEEDBACK: 2 + 3 is 5, not 6; count again.<|im_end|>\n"
    )
    prompt = tiny_tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("6<|im_end|>\n<|im_start|>assistant\n")


def test_tokenizer_round_trips_text(tiny_tokenizer):
    text = "Check step 3 again: 7/21 simplifies to 1/3 (not 1/4).\nÜber café ✓"
    ids = tiny_tokenizer(text).input_ids
    assert tiny_tokenizer.decode(ids) == text


def test_assistant_mask_marks_only_the_assistant_turn(tiny_tokenizer):
    encoded = tiny_tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    input_ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert len(mask) == len(input_ids)
    masked_ids = [token_id for token_id, keep in zip(input_ids, mask) if keep]
    # The assistant's content and the <|im_end|> that ends it: SFT must learn to stop.
    assert tiny_tokenizer.decode(masked_ids) == CONVERSATION[2]["content"] + "<|im_end|>"
    first = mask.index(1)
    assert all(mask[first : first + len(masked_ids)]), "the masked tokens form one contiguous span"
    assert tiny_tokenizer.decode(input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_forward_and_generate(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    inputs = tiny_tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tiny_tokenizer))
    assert torch.isfinite(logits).all()

    output_ids = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert output_ids.shape == (1, inputs["input_ids"].shape[1] + 5)


def test_same_seed_gives_same_weights(tmp_path):
    first = load_file(build_tiny_model(tmp_path / "a", seed=7) / "model.safetensors")
    second = load_file(build_tiny_model(tmp_path / "b", seed=7) / "model.safetensors")
    other = load_file(build_tiny_model(tmp_path / "c", seed=8) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "c" / "tokenizer.json").read_text()


def test_build_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path)
    assert torch.equal(torch.rand(3), expected)
