"""Streamed answers of the transformers app: engine steps made in a worker thread become OpenAI's SSE chunks on
the event loop, and a client that goes away stops the engine after its current step."""

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

from sefl_ray.serve.engine_api import GenerationResult
from sefl_ray.serve.openai_api import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
    new_response_id,
    now,
)

DONE_EVENT = "data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class ChunkWriter:
    """Turns engine steps into SSE events of one streamed response (chat or legacy completion)."""

    def __init__(self, body: ChatCompletionRequest | CompletionRequest) -> None:
        self._chat = isinstance(body, ChatCompletionRequest)
        self._id, self._model, self._created = new_response_id(body), body.model, now()

    def delta(self, text: str, *, role: Literal["assistant"] | None = None) -> str:
        if self._chat:
            return sse(self._chat_chunk([ChatChunkChoice(delta=ChatDelta(role=role, content=text))]).model_dump())
        return sse(self._completion_chunk([CompletionChoice(text=text)]).model_dump())

    def finish(self, result: GenerationResult) -> str:
        if self._chat:
            choice = ChatChunkChoice(delta=ChatDelta(), finish_reason=result.finish_reason)
            return sse(self._chat_chunk([choice]).model_dump())
        choice = CompletionChoice(text="", finish_reason=result.finish_reason)
        return sse(self._completion_chunk([choice]).model_dump())

    def usage(self, result: GenerationResult) -> str:
        usage = Usage.of(result.prompt_tokens, result.completion_tokens)
        if self._chat:
            return sse(self._chat_chunk([], usage).model_dump())
        return sse(self._completion_chunk([], usage).model_dump())

    def _chat_chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self._id, created=self._created, model=self._model, choices=choices, usage=usage)

    def _completion_chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(id=self._id, created=self._created, model=self._model, choices=choices, usage=usage)


_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def iterate_in_thread(make_steps: Callable[..., Iterator[Any]], *args: Any) -> AsyncIterator[Any]:
    """Run a blocking iterator in a thread of its own, handing its items to the event loop as they come.

    Closing this generator early (a client went away) stops the iterator after its current step and closes it in
    its own thread, which releases whatever it holds (the engine's lock).
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def hand_over(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(items.put_nowait, item)

    def produce() -> None:
        steps = None
        try:
            steps = make_steps(*args)
            for step in steps:
                hand_over(step)
                if stop.is_set():
                    break
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            hand_over(_Failure(error))
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()
            hand_over(_END)

    threading.Thread(target=produce, name="sefl-ray-engine-stream", daemon=True).start()
    try:
        while (item := await items.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
