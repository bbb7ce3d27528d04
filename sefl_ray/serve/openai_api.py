"""The slice of the OpenAI wire format our Serve app speaks: request and response bodies, errors, and the mapping
from a validated request to the engine's `GenerationRequest`.

Requests accept unknown fields (OpenAI clients send extras such as `user` or `metadata`) and ignore them, but a
field we would get wrong if ignored is rejected with a 400: `n` other than 1, `logprobs`, `tools`, non-text content.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from sefl_ray.serve.engine_api import GenerationRequest, GenerationResult

# -- requests ------------------------------------------------------------------------------------------------------


class _Lenient(BaseModel):
    """Unknown fields are kept (and ignored), as OpenAI clients send more than we read."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string: text parts are joined with newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class TextFormat(_Lenient):
    type: Literal["text"]


class JSONObjectFormat(_Lenient):
    type: Literal["json_object"]


class JSONSchemaSpec(_Lenient):
    name: str
    # `schema` would shadow a BaseModel attribute; the wire name stays `schema`.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class JSONSchemaFormat(_Lenient):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class _SamplingRequest(_Lenient):
    """What chat and legacy completions share."""

    model: str
    temperature: float | None = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**64 - 1)  # what a torch generator takes
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    # Accepted and ignored: they change nothing a client relies on.
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("only n=1 is supported: send one request per completion you need")
        return n

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    tools: list[dict[str, Any]] | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, logprobs: bool | None) -> bool | None:
        if logprobs:
            raise ValueError("logprobs are not supported")
        return logprobs

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if tools:
            raise ValueError("tools are not supported: this server only generates text")
        return tools


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str]
    echo: bool | None = False
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("send exactly one prompt per request")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool | None) -> bool | None:
        if echo:
            raise ValueError("echo is not supported")
        return echo

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, logprobs: int | None) -> int | None:
        if logprobs:
            raise ValueError("logprobs are not supported")
        return logprobs

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def to_generation_request(
    request: ChatCompletionRequest | CompletionRequest, *, default_max_tokens: int, adapter: str | None = None
) -> GenerationRequest:
    """The engine's view of a validated request; `adapter` is the LoRA adapter the request's model names."""
    generation = GenerationRequest(
        max_tokens=request.max_tokens or default_max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=request.stop_list(),
        seed=request.seed,
        adapter=adapter,
    )
    if isinstance(request, CompletionRequest):
        generation.prompt = request.prompt_text()
        return generation
    generation.max_tokens = request.max_completion_tokens or generation.max_tokens
    # `developer` is OpenAI's newer name for the system role; chat templates only know `system`.
    generation.messages = [
        {"role": "system" if message.role == "developer" else message.role, "content": message.text()}
        for message in request.messages
    ]
    response_format = request.response_format
    if isinstance(response_format, JSONObjectFormat):
        generation.json_object = True
    elif isinstance(response_format, JSONSchemaFormat):
        schema = response_format.json_schema.json_schema
        if schema is None:
            generation.json_object = True
        else:
            generation.json_schema = schema
    return generation


# -- responses -----------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """Only the fields a chunk carries: the first has the role, the others the new text, the last neither."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _present_fields_only(self, handler: Any) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class Completion(BaseModel):
    """Both the legacy completion and its streamed chunks (OpenAI uses `text_completion` for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sefl-ray"
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_response_id(request: ChatCompletionRequest | CompletionRequest) -> str:
    prefix = "chatcmpl" if isinstance(request, ChatCompletionRequest) else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def chat_completion(response_id: str, model: str, result: GenerationResult) -> ChatCompletion:
    return ChatCompletion(
        id=response_id,
        created=now(),
        model=model,
        choices=[ChatChoice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
        usage=Usage.of(result.prompt_tokens, result.completion_tokens),
    )


def completion(response_id: str, model: str, result: GenerationResult) -> Completion:
    return Completion(
        id=response_id,
        created=now(),
        model=model,
        choices=[CompletionChoice(text=result.text, finish_reason=result.finish_reason)],
        usage=Usage.of(result.prompt_tokens, result.completion_tokens),
    )


# -- errors --------------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    """An error the API answers with its HTTP status and OpenAI's error body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = ErrorDetail(message=message, type=error_type, param=param, code=code)

    def body(self) -> dict[str, Any]:
        return ErrorBody(error=self.detail).model_dump()


#: The `type` OpenAI gives an error of each status we answer.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


def error_type_for(status_code: int) -> str:
    return ERROR_TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
