"""A stand-in for a remote LLM vendor: a real OpenAI-compatible HTTP server on 127.0.0.1, so retries, rate limits,
resume and throughput are exercised over the same wire protocol and client library as production, offline.

Faults (429, 500, hangs, malformed bodies) are drawn from a seeded `random.Random`, an RPM limit is enforced over a
trailing window, and every request is recorded so a test can assert what a client really sent, and when. With
`echo_key_in_errors` every error body quotes the request's Authorization header, as some vendors do, so a test can
prove an API key never travels from an error message into a row, a log or a file.

Two ways to run it:

- in-process, for tests: `with LoopbackServer(LoopbackConfig(rate_429=0.5)) as server: ... server.base_url ...`
  (the server runs its own event loop in a background thread, so sync and async clients both work);
- as a separate process, for benchmarks, so the server does not share a GIL with the client under test:
  `process, base_url = start_loopback_process(LoopbackConfig(latency_s=0.05))`, or
  `python -m sefl_ray.testing.loopback --port 8000 --latency-s 0.05`, which prints `READY <base_url>`.
  `replies="schema"` (`--replies schema`) answers each request with the smallest instance of its JSON schema
  (`sefl_ray.testing.schema_replies.schema_reply`), enough to drive synthesis end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: What happened to a recorded request. "rate_limited" is the enforced `rpm_limit`; "429" is a random fault.
OUTCOMES = ("ok", "429", "rate_limited", "500", "timeout", "malformed", "bad_request", "not_found")
#: Outcomes of requests that got past the RPM limiter, i.e. the ones a vendor would count against the limit.
SERVED_OUTCOMES = ("ok", "429", "500", "timeout", "malformed", "bad_request")



@dataclass(frozen=True)
class RawReply:
    """What a replies function returns to send these exact bytes instead of a chat completion (a vendor's garbage:
    a cut body, HTML, a JSON value of the wrong shape)."""

    body: str
    status: int = 200
    content_type: str = "application/json"


#: A fixed reply script: None (echo the last user message), a list cycled in order, or a function of the request
#: (returning the reply's text, or a `RawReply`).
Replies = Sequence[str] | Callable[[dict[str, Any]], str | RawReply] | None

# A body that starts like a chat completion and stops mid-way, as a vendor's truncated response would.
_MALFORMED_BODY = '{"id": "chatcmpl-loopback", "object": "chat.completion", "choices": [{"message": {"content": "'
_SHUTDOWN_TIMEOUT_S = 0.5


@dataclass
class LoopbackConfig:
    """How the stand-in vendor behaves; assign a new one to `server.config` to change it between test phases."""

    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 0.1
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    hang_s: float = 30.0
    rate_malformed: float = 0.0
    rpm_limit: int | None = None
    rpm_window_s: float = 60.0
    echo_key_in_errors: bool = False  # error bodies quote the Authorization header (the API key), as some vendors do
    seed: int = 0
    model: str = "loopback"

    def __post_init__(self) -> None:
        rates = {name: getattr(self, name) for name in ("rate_429", "rate_500", "rate_timeout", "rate_malformed")}
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"LoopbackConfig.{name} must be within [0, 1], got {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"LoopbackConfig fault rates must add up to at most 1, got {sum(rates.values())}")
        if self.rpm_limit is not None and self.rpm_limit < 1:
            raise ValueError(f"LoopbackConfig.rpm_limit must be >= 1 or None, got {self.rpm_limit}")
        if min(self.latency_s, self.latency_jitter_s, self.retry_after_s, self.hang_s) < 0 or self.rpm_window_s <= 0:
            raise ValueError("LoopbackConfig durations must not be negative (and rpm_window_s must be positive)")


@dataclass
class RecordedRequest:
    """One request as the server saw it, kept so tests can assert on pacing, retries and what the client sent.

    `headers` has lower-cased names and unredacted values (the Authorization header included), `arrived_at` is
    `time.monotonic()` once the body was read, and `outcome` is one of `OUTCOMES`.
    """

    arrived_at: float
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    outcome: str


class LoopbackServer:
    """The loopback vendor running in a background thread with its own event loop; see the module docstring."""

    def __init__(
        self,
        config: LoopbackConfig | None = None,
        replies: Replies = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if replies is not None and not callable(replies):
            if isinstance(replies, str) or len(replies) == 0:
                raise ValueError("replies must be None, a non-empty list of strings, or a callable(body) -> str")
            replies = list(replies)
        self._replies = replies
        self._host = host
        self._requested_port = port
        self._config = config or LoopbackConfig()
        # Requests are handled on the server's loop while a test thread reads, resets or swaps the config: the lock
        # keeps records, RPM window, random generator and reply script consistent between the two.
        self._lock = threading.Lock()
        self._rng = random.Random(self._config.seed)
        self._records: list[RecordedRequest] = []
        self._window: collections.deque[float] = collections.deque()
        self._reply_index = 0
        self._ids = itertools.count(1)
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ----- public API -------------------------------------------------------------------------------------------

    @property
    def config(self) -> LoopbackConfig:
        return self._config

    @config.setter
    def config(self, config: LoopbackConfig) -> None:
        # Reseeding makes a test phase's faults depend on its own config only, not on how many requests came before.
        with self._lock:
            self._config = config
            self._rng = random.Random(config.seed)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("LoopbackServer is not listening yet: call start() or use it as a context manager")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot, so a test can iterate it while clients keep sending."""
        with self._lock:
            return list(self._records)

    @property
    def rate_limited_count(self) -> int:
        return self.count("rate_limited")

    def count(self, outcome: str | None = None) -> int:
        with self._lock:
            if outcome is None:
                return len(self._records)
            return sum(1 for record in self._records if record.outcome == outcome)

    def reset(self) -> None:
        """Start a test phase from scratch: no records, an empty RPM window, the reply script and faults rewound."""
        with self._lock:
            self._records.clear()
            self._window.clear()
            self._reply_index = 0
            self._rng = random.Random(self._config.seed)

    def max_in_window(self, window_s: float | None = None, outcomes: Sequence[str] = SERVED_OUTCOMES) -> int:
        """The most arrivals with one of `outcomes` inside any window of `window_s` seconds (default: the config's
        RPM window), counted the way the limiter counts, so `<= rpm_limit` proves a client kept to its limit."""
        window_s = self._config.rpm_window_s if window_s is None else window_s
        arrivals = sorted(record.arrived_at for record in self.requests if record.outcome in outcomes)
        most = 0
        first = 0
        for last, arrived_at in enumerate(arrivals):
            while arrivals[first] <= arrived_at - window_s:
                first += 1
            most = max(most, last - first + 1)
        return most

    def start(self) -> LoopbackServer:
        """Listen in a background thread; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("LoopbackServer is already started")
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failures: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # handed to start() so the caller sees why it did not listen
                failures.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="loopback-openai", daemon=True)
        self._thread.start()
        started.wait()
        if failures:
            self._thread.join()
            self._thread = None
            self._loop = None
            raise failures[0]
        log.debug("loopback OpenAI server listening at %s", self.base_url)
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10 * _SHUTDOWN_TIMEOUT_S + 5)
        self._thread = None
        self._loop = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- serving ----------------------------------------------------------------------------------------------

    async def _open(self) -> None:
        app = web.Application(middlewares=[self._unknown_routes_as_json], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        # access_log=None: per-request logging would dominate the cost of a 256-client benchmark.
        # handler_cancellation: a hung request whose client gave up should not keep a task alive for hang_s.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port, backlog=4096, reuse_address=True)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, legacy=False)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, legacy=True)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        config, record, retry_after_s, latency_s = self._admit(request, body=None, fault_free=True)
        await _sleep(latency_s)
        if record.outcome == "rate_limited":
            return _rate_limit_response(retry_after_s, _error_text(_rpm_message(config), request, config))
        model = {"id": config.model, "object": "model", "created": 0, "owned_by": "sefl-ray-loopback"}
        return web.json_response({"object": "list", "data": [model]})

    async def _generate(self, request: web.Request, *, legacy: bool) -> web.StreamResponse:
        body = _parse_json_object(await request.read())
        problem = _request_problem(body, legacy=legacy)
        config, record, retry_after_s, latency_s = self._admit(request, body, bad_request=problem is not None)
        await _sleep(latency_s)
        outcome = record.outcome
        if outcome == "rate_limited":
            return _rate_limit_response(retry_after_s, _error_text(_rpm_message(config), request, config))
        if outcome == "bad_request":
            return _error_response(400, _error_text(problem or "", request, config), "invalid_request_error")
        if outcome == "429":
            message = "Rate limit reached (injected by the loopback server's rate_429)."
            return _rate_limit_response(config.retry_after_s, _error_text(message, request, config))
        if outcome == "500":
            message = "The server had an error while processing your request."
            return _error_response(500, _error_text(message, request, config), "server_error")
        if outcome == "malformed":
            return web.Response(status=200, text=_MALFORMED_BODY, content_type="application/json")
        assert body is not None
        if outcome == "timeout":
            await asyncio.sleep(config.hang_s)
            content = _default_reply(body, legacy=legacy)  # a late answer does not use up a scripted reply
        else:
            try:
                content = self._scripted_reply(body, legacy=legacy)
            except Exception as exc:  # a broken test script should fail the call loudly, not hang the client
                log.exception("loopback replies callable failed")
                with self._lock:
                    record.outcome = "500"
                message = f"replies callable raised {type(exc).__name__}: {exc}"
                return _error_response(500, _error_text(message, request, config), "server_error")
        if isinstance(content, RawReply):
            return web.Response(status=content.status, text=content.body, content_type=content.content_type)
        return await self._answer(request, body, content, legacy=legacy)

    def _admit(
        self,
        request: web.Request,
        body: dict[str, Any] | None,
        *,
        bad_request: bool = False,
        fault_free: bool = False,
    ) -> tuple[LoopbackConfig, RecordedRequest, float, float]:
        """Decide a request's fate and record it in one step, so limiter, record and arrival order always agree."""
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            config = self._config
            arrived_at = time.monotonic()
            retry_after_s = self._wait_for_rpm_slot(arrived_at, config)
            if retry_after_s is not None:
                outcome = "rate_limited"
            elif bad_request:
                outcome = "bad_request"
            elif fault_free:
                outcome = "ok"
            else:
                outcome = self._draw_fault(config)
            latency_s = config.latency_s
            if config.latency_jitter_s > 0:
                latency_s += self._rng.uniform(0.0, config.latency_jitter_s)
            record = RecordedRequest(arrived_at, request.path, body, headers, outcome)
            self._records.append(record)
        return config, record, retry_after_s or 0.0, latency_s

    def _wait_for_rpm_slot(self, now: float, config: LoopbackConfig) -> float | None:
        """None if the request fits the trailing window (and takes a slot), else the seconds until a slot frees."""
        horizon = now - config.rpm_window_s
        while self._window and self._window[0] <= horizon:
            self._window.popleft()
        if config.rpm_limit is not None and len(self._window) >= config.rpm_limit:
            # The oldest arrival leaves the window rpm_window_s after it came; round up so waiting that long is enough.
            return math.ceil((self._window[0] + config.rpm_window_s - now) * 1000) / 1000
        self._window.append(now)
        return None

    def _draw_fault(self, config: LoopbackConfig) -> str:
        roll = self._rng.random()
        for outcome, rate in (
            ("429", config.rate_429),
            ("500", config.rate_500),
            ("timeout", config.rate_timeout),
            ("malformed", config.rate_malformed),
        ):
            if roll < rate:
                return outcome
            roll -= rate
        return "ok"

    def _scripted_reply(self, body: dict[str, Any], *, legacy: bool) -> str | RawReply:
        if self._replies is None:
            return _default_reply(body, legacy=legacy)
        if callable(self._replies):
            content = self._replies(body)
            if not isinstance(content, (str, RawReply)):
                raise TypeError(f"replies callable must return str or RawReply, got {type(content).__name__}")
            return content
        with self._lock:
            content = self._replies[self._reply_index % len(self._replies)]
            self._reply_index += 1
        return content

    async def _answer(
        self, request: web.Request, body: dict[str, Any], content: str, *, legacy: bool
    ) -> web.StreamResponse:
        model = body["model"]
        completion_id = f"{'cmpl' if legacy else 'chatcmpl'}-loopback-{next(self._ids)}"
        created = int(time.time())
        usage = _usage(body, content, legacy=legacy)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = _stream_chunks(completion_id, created, model, content, usage if include_usage else None, legacy)
            return await _send_event_stream(request, chunks)
        if legacy:
            choice: dict[str, Any] = {"index": 0, "text": content, "finish_reason": "stop", "logprobs": None}
        else:
            message = {"role": "assistant", "content": content, "refusal": None}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        completion = {
            "id": completion_id,
            "object": "text_completion" if legacy else "chat.completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
            "system_fingerprint": None,
        }
        return web.json_response(completion)

    @web.middleware
    async def _unknown_routes_as_json(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            headers = {name.lower(): value for name, value in request.headers.items()}
            with self._lock:
                self._records.append(RecordedRequest(time.monotonic(), request.path, None, headers, "not_found"))
            message = _error_text(f"Invalid URL ({request.method} {request.path})", request, self.config)
            return _error_response(exc.status, message, "invalid_request_error")


# ----- request and response helpers -----------------------------------------------------------------------------


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _parse_json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _request_problem(body: dict[str, Any] | None, *, legacy: bool) -> str | None:
    """What OpenAI would answer 400 for, in its words, or None if the request is well-formed."""
    if body is None:
        return "We could not parse the JSON body of your request. The body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    if legacy and not isinstance(body.get("prompt"), (str, list)):
        return "Missing required parameter: 'prompt'."
    if not legacy and not (isinstance(body.get("messages"), list) and body["messages"]):
        return "Missing required parameter: 'messages'."
    return None


def _text_of(content: Any) -> str:
    """Message content as plain text, whether a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _prompt_text(body: dict[str, Any], *, legacy: bool) -> str:
    if legacy:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            return " ".join(item for item in prompt if isinstance(item, str))
        return prompt if isinstance(prompt, str) else ""
    return " ".join(_text_of(message.get("content")) for message in body["messages"] if isinstance(message, dict))


def _default_reply(body: dict[str, Any], *, legacy: bool) -> str:
    """A deterministic reply a test can predict: the last user message echoed (as JSON when JSON was asked for)."""
    if legacy:
        text = _prompt_text(body, legacy=True)
    else:
        messages = [message for message in body["messages"] if isinstance(message, dict)]
        users = [message for message in messages if message.get("role") == "user"] or messages
        text = _text_of(users[-1].get("content")) if users else ""
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        return json.dumps({"echo": text[:200]})
    return "echo: " + text[:200]


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _usage(body: dict[str, Any], content: str, *, legacy: bool) -> dict[str, int]:
    prompt_tokens = _count_tokens(_prompt_text(body, legacy=legacy))
    completion_tokens = _count_tokens(content)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _stream_chunks(
    completion_id: str,
    created: int,
    model: str,
    content: str,
    usage: dict[str, int] | None,
    legacy: bool,
) -> list[dict[str, Any]]:
    """The chunks OpenAI would send: word by word, a finish chunk, then (if asked) a usage chunk with no choices."""
    pieces = re.findall(r"\s*\S+\s*", content) or [content]

    def chunk(choices: list[dict[str, Any]], chunk_usage: dict[str, int] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion" if legacy else "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = chunk_usage
        return payload

    if legacy:
        chunks = [chunk([{"index": 0, "text": piece, "finish_reason": None, "logprobs": None}]) for piece in pieces]
        chunks.append(chunk([{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]))
    else:
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
        chunks = [chunk([first])]
        for piece in pieces:
            chunks.append(chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None, "logprobs": None}]))
        chunks.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]))
    if usage is not None:
        chunks.append(chunk([], usage))
    return chunks


async def _send_event_stream(request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _error_text(message: str, request: web.Request, config: LoopbackConfig) -> str:
    """An error message, quoting the request's Authorization header when the config says to echo the key."""
    if not config.echo_key_in_errors:
        return message
    return f"{message} (request sent with Authorization: {request.headers.get('Authorization', '(none)')})"


def _error_response(status: int, message: str, error_type: str, code: str | None = None) -> web.Response:
    error = {"message": message, "type": error_type, "param": None, "code": code}
    return web.json_response({"error": error}, status=status)


def _seconds_text(seconds: float) -> str:
    """Seconds with at most millisecond precision and no trailing zeros ("0.1", "12.345", "5")."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _rate_limit_response(retry_after_s: float, message: str) -> web.Response:
    response = _error_response(429, message, "requests", code="rate_limit_exceeded")
    # Both headers, as OpenAI sends them: the openai client prefers retry-after-ms, other clients read Retry-After.
    response.headers["Retry-After"] = _seconds_text(retry_after_s)
    response.headers["retry-after-ms"] = str(math.ceil(retry_after_s * 1000))
    return response


def _rpm_message(config: LoopbackConfig) -> str:
    return (
        f"Rate limit reached for {config.model}: limit {config.rpm_limit} requests per "
        f"{_seconds_text(config.rpm_window_s)} s. Please try again later."
    )


# ----- a separate process, for benchmarks -----------------------------------------------------------------------


def _config_argv(config: LoopbackConfig) -> list[str]:
    """The command-line flags that make `python -m sefl_ray.testing.loopback` run with `config`."""
    argv: list[str] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is not None:
            argv += [f"--{field.name.replace('_', '-')}", str(value)]
    return argv


#: Reply scripts a separate process can be asked for by name (`--replies`): see `_named_replies`.
_NAMED_REPLIES = ("echo", "schema")


def _named_replies(name: str) -> Replies:
    if name == "schema":
        from sefl_ray.testing.schema_replies import schema_reply

        return schema_reply
    return None


def _argument_parser() -> argparse.ArgumentParser:
    defaults = LoopbackConfig()
    parser = argparse.ArgumentParser(
        prog="python -m sefl_ray.testing.loopback",
        description="Serve a fake OpenAI-compatible API on localhost; prints 'READY <base_url>' once listening.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (reported in the READY line)")
    parser.add_argument("--replies", choices=sorted(_NAMED_REPLIES), default="echo",
                        help="echo: the last user message; schema: a minimal instance of the request's JSON schema")
    for field in dataclasses.fields(LoopbackConfig):
        default = getattr(defaults, field.name)
        if field.name in ("rpm_limit", "seed"):
            value_type: Callable[[str], Any] = int
        elif isinstance(default, bool):  # bool("False") is True: read the words _config_argv writes
            value_type = _flag_value
        else:
            value_type = type(default)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=value_type, default=default)
    return parser


def _flag_value(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def _parse_args(argv: Sequence[str] | None) -> tuple[LoopbackConfig, str, int]:
    args = vars(_argument_parser().parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    args.pop("replies")
    return LoopbackConfig(**args), host, port


async def _serve_until_signalled(server: LoopbackServer) -> None:
    await server._open()
    print(f"READY {server.base_url}", flush=True)
    # Nothing else goes to stdout: the parent may stop reading (or close) the pipe once it has the READY line.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopping.set)
    await stopping.wait()
    await server._close()


def main(argv: Sequence[str] | None = None) -> int:
    config, host, port = _parse_args(argv)
    replies = _named_replies(_argument_parser().parse_args(argv).replies)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_serve_until_signalled(LoopbackServer(config, replies=replies, host=host, port=port)))
    return 0


def start_loopback_process(
    config: LoopbackConfig | None = None,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    startup_timeout_s: float = 30.0,
    replies: str = "echo",
) -> tuple[subprocess.Popen[str], str]:
    """Run the server in its own process (so it does not compete with the client under test for the GIL) and
    return it with its base URL once it listens. Stop it with `process.terminate(); process.wait()`.
    `replies` names the reply script: "echo" (the default) or "schema" (see the module docstring)."""
    argv = [sys.executable, "-m", "sefl_ray.testing.loopback", "--host", host, "--port", str(port),
            "--replies", replies]
    argv += _config_argv(config or LoopbackConfig())
    env = dict(os.environ)
    # The child must import this very package even when it is not installed (tests run from a checkout).
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    deadline = time.monotonic() + startup_timeout_s
    while True:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
        if not readable:
            process.kill()
            process.wait()
            raise TimeoutError(f"loopback server did not print READY within {startup_timeout_s} s: {argv}")
        line = process.stdout.readline()
        if not line:
            returncode = process.wait()
            raise RuntimeError(f"loopback server exited with code {returncode} before it was ready: {argv}")
        if line.startswith("READY "):
            process.stdout.close()
            return process, line.split(maxsplit=1)[1].strip()


if __name__ == "__main__":
    sys.exit(main())
