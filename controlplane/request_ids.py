"""ASGI middleware that puts the request's `x-request-id` (set by Envoy at the edge, so the
same id as the data plane's `x-aig-request-id`) in scope for every log line of that request
(`aigw.logs.REQUEST_ID`), uvicorn's access line included."""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from aigw.logs import REQUEST_ID

_HEADER: Final = b"x-request-id"
_MAX_LENGTH: Final = 128


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next((v for k, v in scope["headers"] if k == _HEADER), b"")
        token = REQUEST_ID.set(request_id[:_MAX_LENGTH].decode("latin-1") or None)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)
