"""The contract between the OpenAI routes and a generation engine: what a request asks, what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Protocol


@dataclass
class GenerationRequest:
    """One request, already validated by the API layer; exactly one of `messages` / `prompt` is set."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # response_format json_schema: decoding is constrained to it
    json_object: bool = False  # response_format json_object: any JSON object
    adapter: str | None = None  # a LoRA adapter loaded with engine.load_adapter; None: the base model
    prompt_ids: list[int] | None = None  # set by the engine's `check`, so a request is tokenized once
    grammar: Any = None  # set by the engine's `check`: the compiled grammar, so a batch never compiles one


@dataclass
class GenerationResult:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


class InvalidRequest(ValueError):
    """A request the engine cannot serve, found by `check` before it joins a batch: the API answers 400 for that
    request alone. `param` names the request field at fault; the message never holds server paths or internals."""

    param: str | None = None
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param if param is not None else type(self).param
        self.code = code if code is not None else type(self).code


class PromptTooLong(InvalidRequest):
    """The prompt plus max_tokens does not fit the model's context."""

    code = "context_length_exceeded"


class UnsupportedSchema(InvalidRequest):
    """A response_format JSON schema that cannot be compiled into a decoding grammar."""

    param = "response_format"


class Engine(Protocol):
    """What every engine offers the Serve app. `TransformersEngine` is the CPU/GPU default.

    `check` tokenizes a request and compiles its grammar before it joins a batch, so that whatever one request gets
    wrong fails that request alone: it raises InvalidRequest (PromptTooLong, UnsupportedSchema) and returns the
    prompt's token count. The app calls it in a worker thread, never on the event loop, so it may take its time.
    `generate` runs a batch to completion. `iter_generate` runs a batch step by step for streaming: each item has
    one entry per request, `(new_text, result)` where `result` is set on the step that request finishes.
    """

    def check(self, request: GenerationRequest) -> int: ...

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def iter_generate(
        self, requests: list[GenerationRequest]
    ) -> Iterator[list[tuple[str, GenerationResult | None]]]: ...

    def load_adapter(self, name: str, path: str) -> None: ...

    def unload_adapter(self, name: str) -> None: ...
