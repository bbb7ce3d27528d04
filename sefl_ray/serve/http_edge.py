"""The HTTP edge both engines' apps share: bearer auth, bounded bodies, OpenAI-shaped 4xx errors, and 500s that
give an error id instead of the server's internals."""

import hmac
import logging
import uuid
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from sefl_ray.serve.openai_api import APIError

logger = logging.getLogger(__name__)

RequestT = TypeVar("RequestT", bound=BaseModel)


def check_bearer(request: Request, key: str | None) -> None:
    """Raises a 401 unless the request carries `Authorization: Bearer <key>`; `key` None is no auth."""
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(
            401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'",
            error_type="authentication_error", code="invalid_api_key",
        )


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
        raise too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(max_bytes: int) -> APIError:
    return APIError(413, f"the request body is over this server's limit of {max_bytes} bytes (max_request_bytes)",
                    code="request_too_large")


def server_error(what: str) -> APIError:
    """A 500 that says nothing of the failure but the id under which it logs the exception being handled (call it
    inside the `except`): exception texts hold paths and internals that are the server's business."""
    error_id = uuid.uuid4().hex[:12]
    logger.exception("%s failed (error id %s)", what, error_id)
    return APIError(
        500, f"{what} failed on the server (error id {error_id}): the server's log has the details",
        error_type="server_error",
    )
