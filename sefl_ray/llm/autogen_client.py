"""AutoGen agents call models only through our endpoint layer, so one retry policy, the run's shared rate limiter and
a usage record per call apply to agent conversations too, not just to the calls we make ourselves.

AutoGen's own `OpenAIChatCompletionClient` would open its own connection pool, retry by its own rules (through the
`openai` client) and keep only summed token counts; this adapter hands each call to an `EndpointClient` instead.

What AutoGen (autogen-agentchat 0.7.5) does with an exception raised by `create`:

- `AssistantAgent.run()` / `on_messages()` / `on_messages_stream()` called directly: nothing; the exception
  propagates unchanged, so `except EndpointCallFailed` works around a single agent.
- inside a team (`RoundRobinGroupChat`, `SelectorGroupChat`, ...): the agent's container catches it and publishes a
  `SerializableException` (type name, message, traceback as text), and `team.run()` / `run_stream()` raise a plain
  `RuntimeError` whose text is `"EndpointCallFailed: <endpoint>: <reason>\\nTraceback: ..."`. The exception object
  and its `record` are lost on the way (the `RuntimeError` has no `__cause__`), and the runtime logs the full
  traceback at ERROR on the `autogen_core` logger ("Error processing publish message for ..."). That is why every
  record, failed ones included, is also kept in `EndpointChatCompletionClient.calls`: after a team fails,
  `client.calls[-1]` holds the reason and what it cost.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal

from autogen_core import CancellationToken
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FinishReasons,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,  # type: ignore[attr-defined]  # deprecated in AutoGen, still an abstract property's type
    ModelFamily,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
    validate_model_info,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from sefl_ray.llm.client import EndpointCallFailed, EndpointClient
from sefl_ray.llm.usage import CallRecord

DEFAULT_CONTEXT_TOKENS = 8192
CHARS_PER_TOKEN = 4

# What our endpoints serve: plain text and JSON. No images, and no tools: the agent pairs only talk.
DEFAULT_MODEL_INFO: ModelInfo = {
    "vision": False,
    "function_calling": False,
    "json_output": True,
    "structured_output": True,
    "family": ModelFamily.UNKNOWN,
}

# OpenAI's finish reasons (and a few other vendors') onto the literals `CreateResult` accepts.
_FINISH_REASONS: dict[str, FinishReasons] = {
    "stop": "stop",
    "end_turn": "stop",
    "eos": "stop",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content_filter",
    "function_calls": "function_calls",
    "function_call": "function_calls",
    "tool_calls": "function_calls",
}

# The endpoint client sets these itself; letting a caller pass them would break its bookkeeping (or the call).
_RESERVED_PARAMS = ("model", "messages", "stream")


class EndpointChatCompletionClient(ChatCompletionClient):
    """An AutoGen model client backed by one `EndpointClient`.

    Each agent (or role) should get its own instance, so `calls` and `total_usage()` say what that role cost; the
    `EndpointClient` underneath may be shared, since it owns the connection pool and concurrency cap of an
    endpoint. `default_params` (temperature, max_tokens, seed, ...) go into every request; a call's
    `extra_create_args` override them.

    `model_info` may carry a `context_length` key (not part of AutoGen's `ModelInfo`) that `remaining_tokens`
    measures against; without it the context is taken to be 8192 tokens.
    """

    def __init__(
        self,
        client: EndpointClient,
        *,
        default_params: dict[str, Any] | None = None,
        model_info: ModelInfo | None = None,
    ) -> None:
        self._client = client
        self._default_params = dict(default_params or {})
        _reject_reserved(self._default_params, "default_params")
        chosen_info = model_info if model_info is not None else DEFAULT_MODEL_INFO
        self._model_info: ModelInfo = dict(chosen_info)  # type: ignore[assignment]  # a copy: callers may reuse theirs
        validate_model_info(self._model_info)
        self.calls: list[CallRecord] = []

    @property
    def endpoint_client(self) -> EndpointClient:
        return self._client

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        """One chat completion through the endpoint layer.

        Raises `EndpointCallFailed` unchanged when the endpoint layer gives up (its record is in `calls` too), and
        `ValueError` for what our endpoints cannot take (tools, images, tool results, unsupported JSON modes).
        """
        if tools:
            raise ValueError(
                "EndpointChatCompletionClient does not support tools: build the agent without tools, handoffs or "
                "workbench (sefl-ray agents only talk)"
            )
        chat_messages = [_to_openai_message(message) for message in messages]
        params = self._request_params(json_output, extra_create_args)
        call = asyncio.ensure_future(self._client.chat(chat_messages, **params))
        if cancellation_token is not None:
            cancellation_token.link_future(call)
        try:
            result = await call
        except EndpointCallFailed as failure:
            self.calls.append(failure.record)
            raise
        self.calls.append(result.record)
        return CreateResult(
            finish_reason=_finish_reason(result.finish_reason),
            content=result.text,
            usage=RequestUsage(
                prompt_tokens=result.record.prompt_tokens, completion_tokens=result.record.completion_tokens
            ),
            cached=result.record.cached,
        )

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """The whole reply as one chunk, then the result: agents built with `model_client_stream=True` still work,
        and every call keeps going through the same retries and records as `create`."""
        result = await self.create(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )
        assert isinstance(result.content, str)
        yield result.content
        yield result

    async def close(self) -> None:
        """Leaves the `EndpointClient` open: it is shared with other roles and its owner closes it."""

    def actual_usage(self) -> RequestUsage:
        """Same as `total_usage`: nothing is served from a cache here, so every token counted was billed."""
        return self.total_usage()

    def total_usage(self) -> RequestUsage:
        return RequestUsage(
            prompt_tokens=sum(record.prompt_tokens for record in self.calls),
            completion_tokens=sum(record.completion_tokens for record in self.calls),
        )

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        """A rough count (4 characters a token), the same estimate the endpoint layer reserves rate budget with;
        the endpoints serve many tokenizers and AutoGen only uses this to trim context."""
        chars = sum(len(_text_for_counting(message)) for message in messages)
        chars += sum(len(json.dumps(tool if isinstance(tool, dict) else tool.schema)) for tool in tools)
        return chars // CHARS_PER_TOKEN

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        context_tokens = int(self._model_info.get("context_length", DEFAULT_CONTEXT_TOKENS))  # type: ignore[arg-type]
        return context_tokens - self.count_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        """Still abstract in AutoGen 0.7.5 although deprecated in favour of `model_info`."""
        return {  # type: ignore[return-value]
            "vision": self._model_info["vision"],
            "function_calling": self._model_info["function_calling"],
            "json_output": self._model_info["json_output"],
        }

    @property
    def model_info(self) -> ModelInfo:
        return self._model_info

    def _request_params(
        self, json_output: bool | type[BaseModel] | None, extra_create_args: Mapping[str, Any]
    ) -> dict[str, Any]:
        _reject_reserved(extra_create_args, "extra_create_args")
        params = {**self._default_params, **extra_create_args}
        if json_output is None:
            return params
        if json_output is False:
            params.pop("response_format", None)
        elif json_output is True:
            if not self._model_info["json_output"]:
                raise ValueError("json_output=True asked of a model whose model_info says json_output is False")
            params["response_format"] = {"type": "json_object"}
        elif isinstance(json_output, type) and issubclass(json_output, BaseModel):
            if not self._model_info["structured_output"]:
                raise ValueError(
                    f"json_output={json_output.__name__} asked of a model whose model_info says structured_output "
                    "is False"
                )
            params["response_format"] = json_schema_response_format(json_output)
        else:
            raise ValueError(f"json_output must be None, a bool or a pydantic BaseModel subclass, got {json_output!r}")
        return params


def _to_openai_message(message: LLMMessage) -> dict[str, str]:
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.content}
    if isinstance(message, UserMessage):
        if isinstance(message.content, str):
            return {"role": "user", "content": message.content}
        if all(isinstance(part, str) for part in message.content):
            return {"role": "user", "content": "\n".join(message.content)}  # type: ignore[arg-type]
        raise ValueError(
            f"a message from {message.source!r} contains an image; sefl-ray endpoints take text only (set "
            "model_info vision=False so AutoGen agents replace images with text)"
        )
    if isinstance(message, AssistantMessage):
        if isinstance(message.content, str):
            return {"role": "assistant", "content": message.content}
        raise ValueError(
            f"an assistant message from {message.source!r} holds function calls; EndpointChatCompletionClient "
            "does not support tools"
        )
    if isinstance(message, FunctionExecutionResultMessage):
        raise ValueError(
            "a function execution result reached EndpointChatCompletionClient, which does not support tools"
        )
    raise ValueError(f"unsupported AutoGen message type {type(message).__name__}")


@functools.lru_cache(maxsize=256)
def _cached_schema_format(model: type[BaseModel]) -> dict[str, Any]:
    # OpenAI accepts schema names of [a-zA-Z0-9_-]{1,64}; generic models are named like `Answer[int]`.
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", model.__name__)[:64] or "output"
    # strict=False: vLLM, Ollama and others reject or ignore strict schemas, and pydantic's schema is not always
    # strict-compatible (defaults, optional fields); the agent validates the reply against the model anyway.
    return {"type": "json_schema", "json_schema": {"name": name, "schema": model.model_json_schema(), "strict": False}}


def json_schema_response_format(model: type[BaseModel]) -> dict[str, Any]:
    """A `response_format` asking for `model`'s JSON schema; built once per model (schema generation is slow)
    and copied per call so no caller can change another's."""
    return copy.deepcopy(_cached_schema_format(model))


def _finish_reason(finish_reason: str | None) -> FinishReasons:
    if finish_reason is None:
        return "unknown"
    return _FINISH_REASONS.get(finish_reason.lower(), "unknown")


def _reject_reserved(params: Mapping[str, Any], where: str) -> None:
    reserved = [name for name in _RESERVED_PARAMS if name in params]
    if reserved:
        raise ValueError(
            f"{where} must not set {', '.join(reserved)}: the endpoint config names the model and the endpoint "
            "layer sends the messages, without streaming"
        )


def _text_for_counting(message: LLMMessage) -> str:
    if isinstance(message, FunctionExecutionResultMessage):
        return "".join(result.content for result in message.content)
    if isinstance(message.content, str):
        return message.content
    return "".join(part if isinstance(part, str) else str(part) for part in message.content)
