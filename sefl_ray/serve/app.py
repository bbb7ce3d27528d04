"""The Ray Serve app that puts a feedback model (or a judge) behind an OpenAI-compatible API, so the synthesis,
inference and judge stages talk to our own models exactly as they talk to a vendor's.

One deployment, `OpenAIDeployment`, answers `POST /v1/chat/completions` and `POST /v1/completions` (plain and SSE
streaming), `GET /v1/models`, `GET /health` and `GET /debug/batches`. Non-streaming requests are gathered into
batches by `@serve.batch` and run on the engine in a worker thread, so the event loop keeps accepting requests while
the model runs; streaming requests are batched the same way through `@serve.batch` on an async generator. A request
whose `model` names a LoRA adapter from the config is served by the base model with that adapter, loaded on demand
through `@serve.multiplexed` (least recently used adapters are unloaded past `max_adapters_per_replica`).

`build_app(args)` is the application builder that `serve run serve_configs/feedback.yaml` calls; `args` are the
fields of `ServeAppConfig`. It refuses to build an app whose config is wrong or whose `api_key_env` names an unset
variable (auth fails closed), with a `ServeConfigError` that Serve reports as its one-line message.

One request can only fail itself: the body is bounded (413), and everything a request can get wrong (its JSON, its
fields, a prompt over the context, a JSON schema the grammar compiler rejects) is found before it joins a batch,
with tokenization and grammar compilation in a worker thread. Error bodies say what the client can change; a 500
says only that it happened and gives the id under which the server logged the details.

Annotations are evaluated, not postponed: Serve pickles the deployment class by value, and FastAPI could not resolve
a string annotation such as "Request" against the pickled methods' globals.
"""

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment
from ray.serve.exceptions import RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException

from sefl_ray.config import ServeAppConfig
from sefl_ray.errors import ConfigError
from sefl_ray.serve.engine_api import Engine, GenerationRequest, GenerationResult, InvalidRequest, PromptTooLong
from sefl_ray.serve.openai_api import (
    APIError,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    Usage,
    chat_completion,
    completion,
    error_type_for,
    new_response_id,
    now,
    to_generation_request,
)

logger = logging.getLogger(__name__)

VLLM_NOT_WIRED = (
    "engine 'vllm' is not wired into this app on the CPU path: it needs `pip install 'ray[llm]'` (vLLM, CUDA) and a "
    "GPU, and Ray Serve LLM's own OpenAI app (`ray.serve.llm.build_openai_app`) serves it; use engine: transformers "
    "here"
)


# -- config --------------------------------------------------------------------------------------------------------


class ServeConfigError(ConfigError, RayServeException):
    """A ConfigError that Ray Serve reports as its message alone: Serve's build task returns a RayServeException's
    text as the app's status (`serve run`, `serve status`, a RayService's status) where any other exception becomes
    a traceback. The sefl-ray CLI prints it in one line like every SeflError."""


def load_app_config(args: dict[str, Any] | ServeAppConfig | None) -> ServeAppConfig:
    """Validate a Serve config file's `args`; raises ServeConfigError naming the bad field."""
    if isinstance(args, ServeAppConfig):
        config = args
    else:
        try:
            config = ServeAppConfig.model_validate(args or {})
        except ValidationError as error:  # one line, as Serve and the CLI print it
            problems = [f"{'.'.join(map(str, problem['loc'])) or '(top level)'}: {problem['msg']}"
                        for problem in error.errors()]
            raise ServeConfigError(f"serve app args: {'; '.join(problems)}") from None
    if config.engine == "vllm":
        raise ServeConfigError(VLLM_NOT_WIRED)
    return config


def api_key(env_var: str | None) -> str | None:
    """The key clients must send, read from `env_var`; None only for `api_key_env: null`, the explicit opt-out.

    Fails closed: a named variable that is unset or empty raises, so an app meant to need a key never serves
    everyone because a secret was not mounted."""
    if env_var is None:
        return None
    key = os.environ.get(env_var, "").strip()  # a key read from a secret file often ends in a newline
    if not key:
        raise ServeConfigError(
            f"api_key_env names ${env_var}, which is unset or empty where the Serve app starts: set it to the key "
            f"clients must send, or set api_key_env: null to serve without auth"
        )
    return key


def build_engine(config: ServeAppConfig) -> Engine:
    """The engine a replica runs; imported here so that importing this module never loads torch."""
    if config.engine == "vllm":
        raise ConfigError(VLLM_NOT_WIRED)
    from sefl_ray.serve.engine import TransformersEngine

    return TransformersEngine(
        config.model, dtype=config.dtype, device=config.device, max_model_len=config.max_model_len,
        grammar_cache_size=config.grammar_cache_size,
    )


# -- the HTTP app --------------------------------------------------------------------------------------------------

fastapi_app = FastAPI(title="sefl-ray OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)


@fastapi_app.exception_handler(APIError)
async def _api_error(request: Request, error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code)


@fastapi_app.exception_handler(RequestValidationError)
async def _request_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    api_error = invalid_request(error.errors())
    return JSONResponse(api_error.body(), status_code=api_error.status_code)


@fastapi_app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    api_error = APIError(
        error.status_code, f"{error.detail}: {request.method} {request.url.path}",
        error_type=error_type_for(error.status_code),
    )
    return JSONResponse(api_error.body(), status_code=error.status_code, headers=getattr(error, "headers", None))


def invalid_request(errors: Any) -> APIError:
    """A 400 in OpenAI's shape from pydantic/FastAPI validation errors; `param` names the first bad field."""
    problems, params = [], []
    for problem in errors:
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = str(problem.get("msg", "invalid value")).removeprefix("Value error, ")
        if problem.get("type") == "json_invalid":
            message = f"the body is not valid JSON ({problem.get('ctx', {}).get('error', message)})"
            param = None
        problems.append(f"{param}: {message}" if param else message)
        params.append(param)
    return APIError(400, "; ".join(problems) or "invalid request", param=params[0] if params else None)


RequestT = TypeVar("RequestT", bound=BaseModel)


async def parse_body(request: Request, request_type: type[RequestT], max_bytes: int) -> RequestT:
    try:
        return request_type.model_validate_json(await read_body(request, max_bytes))
    except ValidationError as error:
        raise invalid_request(error.errors()) from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, or a 413 as soon as it is known to be over `max_bytes`: from Content-Length before
    reading anything, else while reading (a chunked body), so a replica never holds more than the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"the request body is over this server's limit of {max_bytes} bytes (max_request_bytes)",
                    code="request_too_large")


# -- helpers -------------------------------------------------------------------------------------------------------


class _AdapterUsers:
    """How many requests are using each adapter, so an eviction waits for them before unloading it."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._changed = threading.Condition()

    def enter(self, name: str) -> None:
        with self._changed:
            self._counts[name] += 1

    def leave(self, name: str) -> None:
        with self._changed:
            self._counts[name] -= 1
            if self._counts[name] <= 0:
                del self._counts[name]
            self._changed.notify_all()

    def wait_until_unused(self, name: str) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._counts[name] <= 0)


class _LoadedAdapter:
    """What Serve's multiplexer caches per adapter. It calls `__del__` (in a worker thread) when it evicts one."""

    def __init__(self, name: str, engine: Engine, users: _AdapterUsers) -> None:
        self.name = name
        self._engine = engine
        self._users = users
        self._unloaded = False

    def __del__(self) -> None:
        # Serve calls this on eviction, and Python may call it again at garbage collection: unload once.
        if self._unloaded:
            return
        self._unloaded = True
        try:
            self._users.wait_until_unused(self.name)
            self._engine.unload_adapter(self.name)
            logger.info("unloaded adapter '%s'", self.name)
        except Exception:
            logger.exception("unloading adapter '%s' failed", self.name)


class _ChunkWriter:
    """Turns engine steps into SSE events of one streamed response (chat or legacy completion)."""

    def __init__(self, body: ChatCompletionRequest | CompletionRequest) -> None:
        self._chat = isinstance(body, ChatCompletionRequest)
        self._id, self._model, self._created = new_response_id(body), body.model, now()

    def delta(self, text: str, *, role: Literal["assistant"] | None = None) -> str:
        if self._chat:
            return _sse(self._chat_chunk([ChatChunkChoice(delta=ChatDelta(role=role, content=text))]).model_dump())
        return _sse(self._completion_chunk([CompletionChoice(text=text)]).model_dump())

    def finish(self, result: GenerationResult) -> str:
        if self._chat:
            choice = ChatChunkChoice(delta=ChatDelta(), finish_reason=result.finish_reason)
            return _sse(self._chat_chunk([choice]).model_dump())
        choice = CompletionChoice(text="", finish_reason=result.finish_reason)
        return _sse(self._completion_chunk([choice]).model_dump())

    def usage(self, result: GenerationResult) -> str:
        usage = Usage.of(result.prompt_tokens, result.completion_tokens)
        if self._chat:
            return _sse(self._chat_chunk([], usage).model_dump())
        return _sse(self._completion_chunk([], usage).model_dump())

    def _chat_chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self._id, created=self._created, model=self._model, choices=choices, usage=usage)

    def _completion_chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(id=self._id, created=self._created, model=self._model, choices=choices, usage=usage)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _iterate_in_thread(make_steps: Callable[..., Iterator[Any]], *args: Any) -> AsyncIterator[Any]:
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
            hand_over(_DONE)

    threading.Thread(target=produce, name="sefl-ray-engine-stream", daemon=True).start()
    try:
        while (item := await items.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()


def _server_error(what: str) -> APIError:
    """A 500 that says nothing of the failure but the id under which it logs the exception being handled (call it
    inside the `except`): exception texts hold paths and internals that are the server's business."""
    error_id = uuid.uuid4().hex[:12]
    logger.exception("%s failed (error id %s)", what, error_id)
    return APIError(
        500, f"{what} failed on the server (error id {error_id}): the server's log has the details",
        error_type="server_error",
    )


def _nothing() -> None:
    return None


# -- the deployment ----------------------------------------------------------------------------------------------------
# Defined after every helper it uses: Serve pickles the class by value when it is decorated, with the module's
# globals as they are at that moment.


@serve.deployment
@serve.ingress(fastapi_app)
class OpenAIDeployment:
    """An engine behind OpenAI's API. `engine_factory` builds the engine from the config (tests pass their own)."""

    def __init__(
        self,
        config: ServeAppConfig | dict[str, Any],
        engine_factory: Callable[[ServeAppConfig], Engine] | None = None,
    ) -> None:
        self._config = load_app_config(config)
        self._api_key = api_key(self._config.api_key_env)  # build_app checked it; this replica's node may differ
        if self._config.torch_threads:
            import torch

            torch.set_num_threads(self._config.torch_threads)
        self._engine = (engine_factory or build_engine)(self._config)
        self._started = now()
        for batch_handler in (self._generate_batch, self._stream_batch):
            batch_handler.set_max_batch_size(self._config.max_batch_size)
            batch_handler.set_batch_wait_timeout_s(self._config.batch_wait_timeout_s)
        self._batch_sizes = {"generate": collections.deque(maxlen=1000), "stream": collections.deque(maxlen=1000)}
        self._adapter_users = _AdapterUsers()

        async def load_adapter(name: str) -> _LoadedAdapter:
            return await self._load_adapter(name)

        # Decorated per replica so the LRU size comes from the config, not from a constant at class definition.
        self._cached_adapter = serve.multiplexed(max_num_models_per_replica=self._config.max_adapters_per_replica)(
            load_adapter
        )
        logger.info(
            "serving %s (%s) as '%s'; batching=%s, adapters=%s",
            self._config.model, self._config.engine, self._config.served_name, self._config.batching,
            sorted(self._config.adapters),
        )

    # -- routes --------------------------------------------------------------------------------------------------

    @fastapi_app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @fastapi_app.get("/v1/models", response_model=None)
    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        base = self._config.served_name
        cards = [ModelCard(id=base, created=self._started, root=self._config.model)]
        cards += [
            ModelCard(id=name, created=self._started, root=path, parent=base)
            for name, path in self._config.adapters.items()
        ]
        return JSONResponse(ModelList(data=cards).model_dump())

    @fastapi_app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(self, request: Request) -> JSONResponse | StreamingResponse:
        return await self._answer(request, ChatCompletionRequest)

    @fastapi_app.post("/v1/completions", response_model=None)
    async def completions(self, request: Request) -> JSONResponse | StreamingResponse:
        return await self._answer(request, CompletionRequest)

    @fastapi_app.get("/debug/batches")
    async def batches(self, request: Request) -> dict[str, Any]:
        """The sizes of this replica's recent batches, oldest first: how well batching is filling."""
        self._authorize(request)
        return {"batching": self._config.batching, **{kind: list(sizes) for kind, sizes in self._batch_sizes.items()}}

    # -- one request ---------------------------------------------------------------------------------------------

    async def _answer(
        self, request: Request, request_type: type[ChatCompletionRequest] | type[CompletionRequest]
    ) -> JSONResponse | StreamingResponse:
        try:
            self._authorize(request)  # before the body is read: a client without the key costs next to nothing
            body = await parse_body(request, request_type, self._config.max_request_bytes)
            generation = await self._generation_request(body)
            release_adapter = await self._use_adapter(generation.adapter)
            if body.stream:
                # The stream holds the adapter itself, from its first step: a response that never starts (the
                # client left first) must not keep an adapter from being evicted.
                release_adapter()
                events = self._events(body, generation)
                return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            try:
                result = await self._generate(generation)
            finally:
                release_adapter()
            response_id = new_response_id(body)
            if isinstance(body, ChatCompletionRequest):
                return JSONResponse(chat_completion(response_id, body.model, result).model_dump())
            return JSONResponse(completion(response_id, body.model, result).model_dump())
        except APIError:
            raise
        except Exception:
            raise _server_error(f"{request.method} {request.url.path}") from None

    async def _generation_request(self, body: ChatCompletionRequest | CompletionRequest) -> GenerationRequest:
        """The engine's request, checked by the engine before it can join a batch: whatever is wrong with it fails
        this request alone, with a 400."""
        adapter = self._adapter_for(body.model)
        generation = to_generation_request(body, default_max_tokens=self._config.default_max_tokens, adapter=adapter)
        try:
            # A chat template, the tokenizer and a new schema's grammar take a while on a long prompt: off the event
            # loop, so that the replica keeps answering (health checks, other requests) meanwhile.
            await asyncio.to_thread(self._engine.check, generation)
        except InvalidRequest as error:
            param = error.param
            if param is None and isinstance(error, PromptTooLong):
                param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
            raise APIError(400, str(error), param=param, code=error.code) from None
        return generation

    def _adapter_for(self, model: str) -> str | None:
        if model == self._config.served_name:
            return None
        if model in self._config.adapters:
            return model
        served = ", ".join([self._config.served_name, *self._config.adapters])
        raise APIError(
            404, f"The model '{model}' does not exist here; this server serves: {served}",
            param="model", code="model_not_found",
        )

    def _authorize(self, request: Request) -> None:
        if self._api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key.encode()):
            raise APIError(
                401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'",
                error_type="authentication_error", code="invalid_api_key",
            )

    # -- generation ----------------------------------------------------------------------------------------------

    async def _generate(self, generation: GenerationRequest) -> GenerationResult:
        if self._config.batching:
            return await self._generate_batch(generation)
        self._batch_sizes["generate"].append(1)
        [result] = await asyncio.to_thread(self._engine.generate, [generation])
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # replaced from the config in __init__
    async def _generate_batch(self, generations: list[GenerationRequest]) -> list[GenerationResult]:
        self._batch_sizes["generate"].append(len(generations))
        return await asyncio.to_thread(self._engine.generate, generations)

    def _steps(self, generation: GenerationRequest) -> AsyncIterator[tuple[str, GenerationResult | None]]:
        """One request's `(new_text, result)` steps, the last one carrying its result."""
        if self._config.batching:
            return self._stream_batch(generation)
        return self._stream_alone(generation)

    async def _stream_alone(self, generation: GenerationRequest) -> AsyncIterator[tuple[str, GenerationResult | None]]:
        self._batch_sizes["stream"].append(1)
        async with contextlib.aclosing(_iterate_in_thread(self._engine.iter_generate, [generation])) as steps:
            async for [step] in steps:
                yield step

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # replaced from the config in __init__
    async def _stream_batch(self, generations: list[GenerationRequest]) -> AsyncIterator[list[Any]]:
        # Serve hands item i of each yielded list to caller i; StopIteration ends that caller's stream.
        self._batch_sizes["stream"].append(len(generations))
        finished = [False] * len(generations)
        async with contextlib.aclosing(_iterate_in_thread(self._engine.iter_generate, generations)) as steps:
            async for step in steps:
                out: list[Any] = []
                for index, (delta, result) in enumerate(step):
                    out.append(StopIteration if finished[index] else (delta, result))
                    finished[index] = finished[index] or result is not None
                yield out
                if all(finished):
                    return

    async def _events(
        self,
        body: ChatCompletionRequest | CompletionRequest,
        generation: GenerationRequest,
    ) -> AsyncIterator[str]:
        """The SSE stream: `data: {chunk}` events, the usage chunk if asked for, then `data: [DONE]`."""
        chunks = _ChunkWriter(body)
        release_adapter = _nothing
        try:
            release_adapter = await self._use_adapter(generation.adapter)
            if isinstance(body, ChatCompletionRequest):
                yield chunks.delta("", role="assistant")
            async with contextlib.aclosing(self._steps(generation)) as steps:
                async for delta, result in steps:
                    if delta:
                        yield chunks.delta(delta)
                    if result is not None:
                        yield chunks.finish(result)
                        if body.include_usage():
                            yield chunks.usage(result)
                        break
            yield "data: [DONE]\n\n"
        except APIError as error:
            yield _sse(error.body())
        except Exception:
            yield _sse(_server_error("the stream").body())
        finally:
            release_adapter()

    # -- adapters ------------------------------------------------------------------------------------------------

    async def _use_adapter(self, name: str | None) -> Callable[[], None]:
        """Load the adapter if needed and hold it until the returned callable is called."""
        if name is None:
            return _nothing
        try:
            await self._cached_adapter(name)
        except Exception:
            raise _server_error(f"loading adapter '{name}'") from None  # the path and the error go to the log only
        # No await between the cache answering and this line, so an eviction cannot slip in before the hold.
        self._adapter_users.enter(name)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._adapter_users.leave(name)

        return release

    async def _load_adapter(self, name: str) -> _LoadedAdapter:
        path = self._config.adapters[name]
        await asyncio.to_thread(self._engine.load_adapter, name, path)
        logger.info("loaded adapter '%s' from %s", name, path)
        return _LoadedAdapter(name, self._engine, self._adapter_users)


# -- application builders ------------------------------------------------------------------------------------------


def deployment_for(config: ServeAppConfig) -> Deployment:
    """`OpenAIDeployment` with the config's replicas, autoscaling and resources applied."""
    options: dict[str, Any] = {
        "max_ongoing_requests": config.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
    }
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling.model_dump()
    else:
        options["num_replicas"] = config.num_replicas
    return OpenAIDeployment.options(**options)


def build_app(args: dict[str, Any] | ServeAppConfig) -> Application:
    """The application builder of `serve run` configs (`import_path: sefl_ray.serve.app:build_app`).

    Raises ServeConfigError for a bad config or an `api_key_env` that is unset here: Serve runs the builder before
    any replica, in the app's runtime_env, so a missing key stops the app in one line instead of a replica crash
    loop (each replica checks again, for a cluster whose nodes differ)."""
    config = load_app_config(args)
    api_key(config.api_key_env)
    return deployment_for(config).bind(config)
