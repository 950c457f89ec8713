"""The mock provider's ASGI app: paths matched by suffix (so any base path works), requests
recorded for tests, and test-control headers.

    POST …/chat/completions  …/completions  …/embeddings  …/responses   OpenAI shapes
    POST …/messages                                                     Anthropic shape
    GET  …/models            OpenAI list (Anthropic's with an `anthropic-version` header)
    GET  /_mock/requests     every request received, oldest first; DELETE clears them

    x-mock-status: NNN        answer that status with a provider-style error body
    x-mock-delay-ms: N        wait before answering
    x-mock-chunk-delay-ms: N  wait between streamed events
    x-mock-chunks: N          reply with N words (one token and one chunk each)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from aigw.mock import anthropic_api, openai_api
from aigw.mock.text import make_reply

MAX_RECORDED = 10_000
MODELS = ("gpt-5.4-mini", "gpt-5.4-nano", "claude-haiku-4.5", "gemini-2.5-flash",
          "text-embedding-3-small")  # fmt: skip
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class _MockError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_mock_app() -> Starlette:
    """A fresh mock provider with its own request log (`app.state.received`)."""
    app = Starlette(
        routes=[
            Route("/_mock/requests", _list_requests, methods=["GET"]),
            Route("/_mock/requests", _clear_requests, methods=["DELETE"]),
            Route("/{path:path}", _provider, methods=["GET", "POST"]),
        ]
    )
    app.state.received = deque(maxlen=MAX_RECORDED)
    return app


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


async def _list_requests(request: Request) -> Response:
    return _json({"object": "list", "data": list(request.app.state.received)})


async def _clear_requests(request: Request) -> Response:
    received = request.app.state.received
    count = len(received)
    received.clear()
    return _json({"deleted": count})


async def _provider(request: Request) -> Response:
    raw = await request.body()
    body: Any = None
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
    request.app.state.received.append(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": {name.lower(): value for name, value in request.headers.items()},
            "body": body if body is not None or not raw else raw.decode(errors="replace"),
            "received_at": time.time(),
        }
    )
    anthropic = request.url.path.endswith("/messages")
    try:
        await asyncio.sleep(_header_int(request, "x-mock-delay-ms", 0) / 1000)
        if "x-mock-status" in request.headers:
            status = _header_int(request, "x-mock-status", 500)
            raise _MockError(status, f"Mock error {status} requested with x-mock-status.")
        return await _answer(request, body, raw)
    except _MockError as error:
        return _error(error.status, str(error), anthropic)


async def _answer(request: Request, body: Any, raw: bytes) -> Response:
    path = request.url.path
    if request.method == "GET":
        if path.endswith("/models"):
            return _json(_models(anthropic="anthropic-version" in request.headers))
        raise _MockError(404, f"Unknown URL (GET {path}).")
    if not isinstance(body, dict):
        raise _MockError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _MockError(400, "model: Field required.")
    chunks = _header_int(request, "x-mock-chunks", None)
    reply = make_reply(body, chunks)
    stream = body.get("stream") is True
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    events: Iterator[bytes]
    if path.endswith("/chat/completions"):
        if not stream:
            return _json(openai_api.chat_completion(model, reply))
        events = openai_api.chat_completion_stream(model, reply, include_usage)
    elif path.endswith("/completions"):
        if not stream:
            return _json(openai_api.completion(model, reply))
        events = openai_api.completion_stream(model, reply, include_usage)
    elif path.endswith("/embeddings"):
        return _json(openai_api.embeddings(model, body))
    elif path.endswith("/responses"):
        if not stream:
            return _json(openai_api.response(model, body, reply))
        events = openai_api.response_stream(model, body, reply)
    elif path.endswith("/messages"):
        if not isinstance(body.get("max_tokens"), int):
            raise _MockError(400, "max_tokens: Field required")
        if not stream:
            return _json(anthropic_api.message(model, reply))
        events = anthropic_api.message_stream(model, reply)
    else:
        raise _MockError(404, f"Unknown URL (POST {path}).")
    delay = _header_int(request, "x-mock-chunk-delay-ms", 0) / 1000
    return StreamingResponse(
        _paced(events, delay),
        media_type="text/event-stream; charset=utf-8",
        headers={"cache-control": "no-cache"},
    )


async def _paced(events: Iterator[bytes], delay: float) -> AsyncIterator[bytes]:
    for number, event in enumerate(events):
        if delay and number:
            await asyncio.sleep(delay)
        yield event


def _models(anthropic: bool) -> dict[str, Any]:
    if anthropic:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"}
            for m in MODELS
        ]
        return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
    data = [{"id": m, "object": "model", "created": 1767225600, "owned_by": "mock"} for m in MODELS]
    return {"object": "list", "data": data}


def _error(status: int, message: str, anthropic: bool) -> Response:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if anthropic:
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_mock{uuid.uuid4().hex[:24]}",
        }
    else:
        body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return _json(body, status)


def _header_int(request: Request, name: str, default: Any) -> Any:
    value = request.headers.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise _MockError(400, f"{name} must be an integer, not {value!r}.") from None
