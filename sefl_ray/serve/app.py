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
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment
from starlette.exceptions import HTTPException as StarletteHTTPException

from sefl_ray.config import ServeAppConfig
from sefl_ray.serve.adapters import AdapterUsers, LoadedAdapter
from sefl_ray.serve.app_config import (
    EngineFactory,
    ServeConfigError,
    api_key,
    build_engine,
    deployment_options,
    load_app_config,
)
from sefl_ray.serve.engine_api import GenerationRequest, GenerationResult, InvalidRequest, PromptTooLong
from sefl_ray.serve.http_edge import check_bearer, invalid_request, parse_body, server_error
from sefl_ray.serve.openai_api import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    chat_completion,
    completion,
    error_type_for,
    new_response_id,
    now,
    to_generation_request,
)
from sefl_ray.serve.streaming import DONE_EVENT, ChunkWriter, iterate_in_thread, sse

__all__ = ["ServeConfigError", "build_app", "deployment_for", "load_app_config"]

logger = logging.getLogger(__name__)

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
        engine_factory: EngineFactory | None = None,
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
        self._adapter_users = AdapterUsers()

        async def load_adapter(name: str) -> LoadedAdapter:
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
            raise server_error(f"{request.method} {request.url.path}") from None

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
        check_bearer(request, self._api_key)

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
        async with contextlib.aclosing(iterate_in_thread(self._engine.iter_generate, [generation])) as steps:
            async for [step] in steps:
                yield step

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # replaced from the config in __init__
    async def _stream_batch(self, generations: list[GenerationRequest]) -> AsyncIterator[list[Any]]:
        # Serve hands item i of each yielded list to caller i; StopIteration ends that caller's stream.
        self._batch_sizes["stream"].append(len(generations))
        finished = [False] * len(generations)
        async with contextlib.aclosing(iterate_in_thread(self._engine.iter_generate, generations)) as steps:
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
        chunks = ChunkWriter(body)
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
            yield DONE_EVENT
        except APIError as error:
            yield sse(error.body())
        except Exception:
            yield sse(server_error("the stream").body())
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
            raise server_error(f"loading adapter '{name}'") from None  # the path and the error go to the log only
        # No await between the cache answering and this line, so an eviction cannot slip in before the hold.
        self._adapter_users.enter(name)
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._adapter_users.leave(name)

        return release

    async def _load_adapter(self, name: str) -> LoadedAdapter:
        path = self._config.adapters[name]
        await asyncio.to_thread(self._engine.load_adapter, name, path)
        logger.info("loaded adapter '%s' from %s", name, path)
        return LoadedAdapter(name, self._engine, self._adapter_users)


# -- application builders ------------------------------------------------------------------------------------------


def deployment_for(config: ServeAppConfig) -> Deployment:
    """`OpenAIDeployment` with the config's replicas, autoscaling and resources applied."""
    return OpenAIDeployment.options(**deployment_options(config))


def build_app(args: dict[str, Any] | ServeAppConfig) -> Application:
    """The application builder of `serve run` configs (`import_path: sefl_ray.serve.app:build_app`), for both
    engines: `engine: vllm` is built by Ray Serve LLM (`sefl_ray.serve.vllm_app`), behind the same routes and auth.

    Raises ServeConfigError for a bad config or an `api_key_env` that is unset here: Serve runs the builder before
    any replica, in the app's runtime_env, so a missing key stops the app in one line instead of a replica crash
    loop (each replica checks again, for a cluster whose nodes differ)."""
    config = load_app_config(args)
    api_key(config.api_key_env)
    if config.engine == "vllm":
        from sefl_ray.serve.vllm_app import build_vllm_app

        return build_vllm_app(config)
    return deployment_for(config).bind(config)
