"""Ray Serve LLM's OpenAI ingress with our bearer auth and model names: it imports `ray.serve.llm` (vLLM), so only
`engine: vllm` apps import it.

Serve LLM's builder makes the ingress from a class whose route methods it decorates itself, so there is no app to
add a middleware to: each route is wrapped instead, and answers 401 before it runs when the key is wrong. A client
names an adapter as it does on the transformers app (`model: <adapter>`); Serve LLM's own name for it is
`<served model>:<adapter>`, rewritten here both ways: model cards and answers (streamed chunks too) carry the names
clients use. A request without max_tokens
gets the config's `default_max_tokens`, and Serve LLM's plain HTTP errors (an unknown model) get OpenAI's error body.
"""

import functools
import json
import inspect
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from ray.serve.llm.ingress import OpenAiIngress

from sefl_ray.serve.app_config import api_key
from sefl_ray.serve.http_edge import check_bearer
from sefl_ray.serve.openai_api import APIError, error_type_for

# The routes Serve LLM's ingress registers (its DEFAULT_ENDPOINTS): every one of them needs the key.
AUTHORIZED_ROUTES = ("models", "model_data", "completions", "chat", "embeddings", "transcriptions", "score",
                     "tokenize", "detokenize")


class AuthorizedIngress(OpenAiIngress):
    def __init__(self, llm_deployments: dict[str, Any], model_cards: dict[str, Any], *,
                 lora_paths: dict[str, str] | None = None, api_key_env: str | None = None,
                 served_name: str = "", adapter_names: list[str] | None = None,
                 default_max_tokens: int | None = None) -> None:
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        self._api_key = api_key(api_key_env)  # the builder checked it; this replica's node may differ
        [self._model_id] = list(model_cards)  # Serve LLM's id of the model: the served name without colons
        self._served_name = served_name or self._model_id
        self._adapter_names = set(adapter_names or ())
        self._default_max_tokens = default_max_tokens

    def _denied(self, request: Request) -> JSONResponse | None:
        try:
            check_bearer(request, self._api_key)
        except APIError as error:
            return JSONResponse(error.body(), status_code=error.status_code)
        return None

    async def _as_configured(self, body: Any, request: Request) -> None:
        """What the transformers app does with a request's model name and missing max_tokens, done here too."""
        model = getattr(body, "model", None)
        if model == self._served_name:
            body.model = self._model_id
        elif model in self._adapter_names:
            body.model = f"{self._model_id}:{model}"
        if hasattr(body, "max_tokens") and not await _client_sets_max_tokens(request):
            body.max_tokens = self._default_max_tokens


    async def _get_response(self, *, body: Any, call_method: str, raw_request: Request | None = None) -> Any:
        """Serve LLM's answers, each naming the model as the client did: vLLM names an adapter's answer by Serve
        LLM's id (`<model>:<adapter>`), in the response and in every streamed chunk."""
        internal = getattr(body, "model", None)
        shown = self._client_name(internal) if isinstance(internal, str) else internal
        async for answer in super()._get_response(body=body, call_method=call_method, raw_request=raw_request):
            yield answer if shown == internal else _renamed(answer, internal, shown)

    def _client_name(self, model_id: str) -> str:
        if model_id == self._model_id:
            return self._served_name
        return model_id.removeprefix(f"{self._model_id}:")

    def _with_served_names(self, answer: Any) -> Any:
        """Model cards under the names clients use (Serve LLM lists its own ids); copies, not its cached cards."""
        if hasattr(answer, "data") and hasattr(answer, "object"):  # a ModelList
            return answer.model_copy(update={"data": [self._served_card(card) for card in answer.data]})
        if hasattr(answer, "owned_by"):  # one ModelCard
            return self._served_card(answer)
        return answer

    def _served_card(self, card: Any) -> Any:
        return card.model_copy(update={"id": self._client_name(card.id)})


def _renamed(answer: Any, internal: str, shown: str) -> Any:
    """`answer` (a response, a streamed chunk as an object or as SSE text, or a batch of them) with its `model` field
    `shown` where it was `internal`."""
    if isinstance(answer, list):
        return [_renamed(item, internal, shown) for item in answer]
    if isinstance(answer, str):
        for separator in (":", ": "):  # only the model field: a quote inside generated text is escaped
            answer = answer.replace(f'"model"{separator}{json.dumps(internal)}',
                                    f'"model"{separator}{json.dumps(shown)}')
        return answer
    if getattr(answer, "model", None) == internal and hasattr(answer, "model_copy"):
        return answer.model_copy(update={"model": shown})
    return answer


async def _client_sets_max_tokens(request: Request) -> bool:
    """Whether the client's own JSON names a token limit. The parsed request cannot say: vLLM's legacy-completion
    model fills in 16 before validation. Starlette keeps the body it read, so reading it again costs nothing."""
    try:
        sent = json.loads(await request.body())
    except ValueError:
        return True
    return not isinstance(sent, dict) or bool({"max_tokens", "max_completion_tokens"} & sent.keys())


def _authorized(route: Callable[..., Any]) -> Callable[..., Any]:
    """`route` behind the key. FastAPI reads a route's parameters from its signature: the wrapper keeps the
    route's own and adds the raw `request` where the route has none, to read the header from."""
    signature = inspect.signature(route, eval_str=True)
    parameters = list(signature.parameters.values())
    takes_request = "request" in signature.parameters
    if not takes_request:
        parameters.append(inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request))

    @functools.wraps(route)
    async def authorized(self: AuthorizedIngress, *args: Any, **kwargs: Any) -> Any:
        request = kwargs["request"] if takes_request else kwargs.pop("request")
        if (denied := self._denied(request)) is not None:
            return denied
        await self._as_configured(kwargs.get("body"), request)
        if kwargs.get("model") == self._served_name:  # GET /v1/models/{model}
            kwargs["model"] = self._model_id
        try:
            answer = await route(self, *args, **kwargs)
        except HTTPException as error:  # Serve LLM's "no such model" and the like: FastAPI would answer {"detail"}
            api_error = APIError(error.status_code, str(error.detail), error_type=error_type_for(error.status_code),
                                 code="model_not_found" if error.status_code == 404 else None)
            return JSONResponse(api_error.body(), status_code=error.status_code)
        return self._with_served_names(answer)

    authorized.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return authorized


for _route in AUTHORIZED_ROUTES:
    setattr(AuthorizedIngress, _route, _authorized(getattr(OpenAiIngress, _route)))
