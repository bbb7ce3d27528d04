"""Batched generation with transformers, with per-request sampling and JSON-schema-constrained decoding.

A plain decode loop rather than `model.generate`: each request in a batch keeps its own temperature, top_p, seed,
stop strings, token budget and grammar, and streaming falls out of the loop for free. Structured output uses
xgrammar (the library vLLM uses) to mask every token that would break the requested JSON schema; that is what
makes small models such as SmolLM2-135M usable in the loop, since asked in words they never write valid JSON.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import json
import logging
import re
import threading
from typing import Iterator

import torch

from sefl_ray.serve.engine_api import (
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    PromptTooLong,
    UnsupportedSchema,
)

logger = logging.getLogger(__name__)

# xgrammar's errors start with "[time] /its/source/file.cc:123: "; what follows is about the schema itself.
_XGRAMMAR_PREFIX = re.compile(r"^\[[^\]]*\]\s*[^\s:]+:\d+:\s*")


class TransformersEngine:
    def __init__(self, model: str, *, dtype: str = "float32", device: str | None = None,
                 max_model_len: int | None = None, grammar_cache_size: int = 64):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sefl_ray.models import resolve_model

        path = resolve_model(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        config = self.model.config
        self.max_model_len = max_model_len or getattr(config, "max_position_embeddings", 2048)
        self.vocab_size = config.vocab_size
        self.stop_token_ids = _stop_token_ids(self.model, self.tokenizer)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.stop_token_ids[0]
        # Compiled grammars by schema, least recently used first; a client sending a new schema per request must
        # not grow a replica's memory without end.
        self._grammars: collections.OrderedDict[str, object] = collections.OrderedDict()
        self.grammar_cache_size = grammar_cache_size
        self._grammar_lock = threading.Lock()
        # `check` runs in worker threads, several at once; HF tokenizers are not meant to encode concurrently.
        self._tokenizer_lock = threading.Lock()
        self._closing: torch.Tensor | None = None
        self._compiler = None
        self._adapters: set[str] = set()
        # transformers 5 renamed the KV-cache argument of forward(); 4.x still calls it past_key_values
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._lock = threading.Lock()  # one batch at a time on the model; the Serve batcher queues the rest

    # -- the Engine protocol --------------------------------------------------------------------------------

    def check(self, request: GenerationRequest) -> int:
        """Tokenize the prompt and compile the grammar now, so that a batch never meets a request it cannot run."""
        with self._tokenizer_lock:
            prompt_ids = request.prompt_ids = self._encode(request)
        if len(prompt_ids) + request.max_tokens > self.max_model_len:
            raise PromptTooLong(
                f"prompt of {len(prompt_ids)} tokens plus max_tokens {request.max_tokens} exceeds the model's "
                f"context of {self.max_model_len} tokens"
            )
        request.grammar = self._grammar_for(request)
        return len(prompt_ids)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        for step in self.iter_generate(requests):
            for index, (_, result) in enumerate(step):
                if result is not None:
                    results[index] = result
        return results  # type: ignore[return-value]

    def iter_generate(self, requests: list[GenerationRequest]) -> Iterator[list[tuple[str, GenerationResult | None]]]:
        """Decode a batch; a batch mixing adapters runs one adapter group after another."""
        groups: dict[str | None, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.adapter, []).append(index)
        for adapter, indices in groups.items():
            with self._lock:
                self._activate(adapter)
                for step in self._decode([requests[i] for i in indices]):
                    full: list[tuple[str, GenerationResult | None]] = [("", None)] * len(requests)
                    for position, index in enumerate(indices):
                        full[index] = step[position]
                    yield full

    def load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        with self._lock:
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
            else:
                self.model.load_adapter(path, adapter_name=name)
            self._adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name in self._adapters:
                self.model.delete_adapter(name)
                self._adapters.discard(name)

    # -- internals ------------------------------------------------------------------------------------------

    def _activate(self, adapter: str | None) -> None:
        """Select the adapter for the next batch. The model stays a PeftModel once one was loaded, even after
        the last adapter is unloaded, so the base must be selected by switching adapter layers off."""
        if adapter is not None and adapter not in self._adapters:
            raise ValueError(f"adapter '{adapter}' is not loaded")
        if not hasattr(self.model, "base_model") or not hasattr(self.model.base_model, "disable_adapter_layers"):
            return
        if adapter is None or not self._adapters:
            self.model.base_model.disable_adapter_layers()
        else:
            self.model.base_model.enable_adapter_layers()
            self.model.set_adapter(adapter)

    def _encode(self, request: GenerationRequest) -> list[int]:
        if request.prompt_ids is not None:
            return request.prompt_ids
        if request.messages is not None:
            import jinja2

            try:
                text = self.tokenizer.apply_chat_template(
                    request.messages, add_generation_prompt=True, tokenize=False
                )
            except jinja2.TemplateSyntaxError:
                raise  # the template itself is broken: the server's fault, not the request's
            except jinja2.TemplateError as error:  # the template's raise_exception, e.g. roles must alternate
                raise InvalidRequest(f"the model's chat template rejects these messages: {error}",
                                     param="messages") from None
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(request.prompt or "")["input_ids"]

    @torch.inference_mode()
    def _decode(self, requests: list[GenerationRequest]) -> Iterator[list[tuple[str, GenerationResult | None]]]:
        prompts = [self._encode(request) for request in requests]
        batch, width = len(prompts), max(len(ids) for ids in prompts)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding: every row's next token lands in the last column
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        samplers = [_RowSampler(request, self._matcher_for(request), self.vocab_size, self._closing_tokens())
                    for request in requests]
        generated: list[list[int]] = [[] for _ in requests]
        texts = [""] * batch
        done = [False] * batch
        past = None
        for _ in range(max(request.max_tokens for request in requests)):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, logits_to_keep=1, **{self._cache_arg: past})
            past = getattr(out, self._cache_arg)
            logits = out.logits[:, -1, :].float()
            next_tokens = [self.pad_token_id] * batch
            step: list[tuple[str, GenerationResult | None]] = [("", None)] * batch
            for row, sampler in enumerate(samplers):
                if done[row]:
                    continue
                token = sampler.sample(logits[row, : self.vocab_size], requests[row].max_tokens - len(generated[row]))
                next_tokens[row] = token
                finish = None
                if token in self.stop_token_ids or sampler.terminated():
                    finish = "stop"
                else:
                    generated[row].append(token)
                text, hit_stop = _cut_at_stop(
                    self.tokenizer.decode(generated[row], skip_special_tokens=True), requests[row].stop
                )
                if hit_stop:
                    finish = "stop"
                elif finish is None and len(generated[row]) >= requests[row].max_tokens:
                    finish = "length"
                if finish is None and text.endswith("\ufffd"):
                    continue  # hold back a half-decoded multi-byte character until its next byte arrives
                delta, texts[row] = text[len(texts[row]):], text
                result = None
                if finish is not None:
                    done[row] = True
                    result = GenerationResult(text, finish, len(prompts[row]), len(generated[row]))
                step[row] = (delta, result)
            yield step
            if all(done):
                return
            input_ids = torch.tensor(next_tokens, device=self.device).unsqueeze(-1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=-1)
            position_ids = position_ids[:, -1:] + 1

    def _closing_tokens(self) -> torch.Tensor:
        """Tokens made only of JSON closers (quote, brackets, comma): favoured when a constrained reply is about
        to run out of tokens, so it closes its strings and objects instead of being cut off mid-string."""
        if self._closing is None:
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            ids = [i for i, piece in enumerate(pieces) if i < self.vocab_size and piece
                   and (text := self.tokenizer.convert_tokens_to_string([piece]).strip())
                   and set(text) <= set('"}],')]
            self._closing = torch.tensor(ids, dtype=torch.long)
        return self._closing

    def _matcher_for(self, request: GenerationRequest):
        grammar = request.grammar if request.grammar is not None else self._grammar_for(request)
        if grammar is None:
            return None
        import xgrammar as xgr

        return xgr.GrammarMatcher(grammar)

    def _grammar_for(self, request: GenerationRequest):
        """The request's compiled grammar (None: unconstrained), from a bounded LRU cache keyed by the schema;
        raises UnsupportedSchema for a schema xgrammar cannot compile."""
        if request.json_schema is None and not request.json_object:
            return None
        if request.json_schema is None:
            key = "json_object"
        else:
            key = hashlib.sha256(json.dumps(request.json_schema, sort_keys=True).encode()).hexdigest()
        with self._grammar_lock:
            if key in self._grammars:
                self._grammars.move_to_end(key)
                return self._grammars[key]
            compiler = self._grammar_compiler()
            if request.json_schema is None:
                grammar = compiler.compile_builtin_json_grammar()
            else:
                try:  # compact JSON: a small model given free whitespace can pad forever
                    grammar = compiler.compile_json_schema(json.dumps(request.json_schema), any_whitespace=False)
                except Exception as error:  # noqa: BLE001 - xgrammar raises RuntimeError for any schema it rejects
                    raise UnsupportedSchema(_schema_error(error)) from None
            self._grammars[key] = grammar
            while len(self._grammars) > self.grammar_cache_size:
                self._grammars.popitem(last=False)
            return grammar

    def _grammar_compiler(self):
        if self._compiler is None:
            import xgrammar as xgr

            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids
            )
            # Its own cache is unbounded: ours above is the one that keeps grammars.
            self._compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        return self._compiler


class _RowSampler:
    """Picks one row's next token under its own sampling parameters, seed and grammar."""

    def __init__(self, request: GenerationRequest, matcher, vocab_size: int, closing_tokens: torch.Tensor):
        self.temperature, self.top_p = request.temperature, request.top_p
        self.generator = None
        if request.seed is not None:
            self.generator = torch.Generator().manual_seed(request.seed)
        self.matcher = matcher
        self.closing_tokens = closing_tokens
        self.wrap_up_at = min(64, max(16, request.max_tokens // 4))  # tokens left when a JSON reply starts closing
        self.bitmask = None
        if matcher is not None:
            import xgrammar as xgr

            self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def sample(self, logits: torch.Tensor, tokens_left: int) -> int:
        if self.matcher is not None:
            import xgrammar as xgr

            self.matcher.fill_next_token_bitmask(self.bitmask)
            logits = logits.unsqueeze(0)
            xgr.apply_token_bitmask_inplace(logits, self.bitmask.to(logits.device))
            logits = logits.squeeze(0)
            if tokens_left <= self.wrap_up_at:  # only allowed closers gain: the grammar's mask still rules
                logits[self.closing_tokens.to(logits.device)] += 100.0
        if self.temperature <= 1e-5:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            if self.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < self.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            token = int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
        if self.matcher is not None:
            self.matcher.accept_token(token)
        return token

    def terminated(self) -> bool:
        return self.matcher is not None and self.matcher.is_terminated()


def _schema_error(error: Exception) -> str:
    """What a client is told about a schema xgrammar rejected: its reason, without xgrammar's source location."""
    reason = str(error).strip()
    detail = _XGRAMMAR_PREFIX.sub("", reason) if _XGRAMMAR_PREFIX.match(reason) else ""
    message = "response_format json_schema cannot be enforced by this server"
    if detail and "\n" not in detail and len(detail) <= 300:
        message += f": {detail}"
    else:
        logger.info("xgrammar rejected a schema: %s", reason)
    return message


def _stop_token_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for token in source if isinstance(source, list) else [source]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(stop) for stop in stops if stop and stop in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
