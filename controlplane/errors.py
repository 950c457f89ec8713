"""Every control-plane error leaves as the OpenAI envelope (`aigw.errors`), from one place.

GatewayError            raised by our code → its own status and body
RequestValidationError  FastAPI's bad input → 400 `invalid_request`, message naming the field
HTTPException           routing (404 unknown URL, 405) and unreadable bodies → envelope
PostgreSQL unreachable  503 `gateway_unavailable`, retryable (the server logs one line)
anything else           500 `internal_error`, nothing internal shown (the server logs it)
"""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from aigw.errors import GatewayError, gateway_unavailable, invalid_request, unknown_url

log = logging.getLogger(__name__)

_LOCATIONS = {"body", "query", "path", "header"}
_NOT_AN_OBJECT = {"missing", "model_attributes_type", "dict_type", "model_type"}
# A database that refuses or drops connections (down, restarting, cut off): asyncpg raises the
# socket's own OSError (ConnectionRefusedError, TimeoutError...) or one of these.
_DATABASE_DOWN = (OSError, asyncpg.ConnectionDoesNotExistError, asyncpg.CannotConnectNowError)


def not_found(kind: str, object_id: str) -> GatewayError:
    return GatewayError(
        404, "not_found", "invalid_request_error", f"No {kind} with id '{object_id}'.", param="id"
    )


def validation_error(exc: RequestValidationError) -> GatewayError:
    """The first problem of the request, as a 400 naming the field (`param`)."""
    errors = exc.errors()
    if not errors:
        return invalid_request("The request is not valid.")
    error = errors[0]
    loc = [str(part) for part in error.get("loc", ())]
    if loc and loc[0] in _LOCATIONS:
        where, loc = loc[0], loc[1:]
    else:
        where = "body"
    if error.get("type") == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return invalid_request(f"The request body is not valid JSON: {detail}".rstrip(": "))
    if where == "body" and not loc and error.get("type") in _NOT_AN_OBJECT:
        return invalid_request(
            "The request body must be a JSON object sent with 'Content-Type: application/json'."
        )
    field = ".".join(loc) or where
    message = "unknown field" if error.get("type") == "extra_forbidden" else error.get("msg")
    return invalid_request(f"{field}: {message}", param=field)


def _envelope(error: GatewayError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _on_gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return _envelope(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _envelope(validation_error(exc))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = unknown_url(request.method, request.url.path)
    elif exc.status_code == 405:
        error = GatewayError(
            405,
            "method_not_allowed",
            "invalid_request_error",
            f"{request.method} is not allowed on {request.url.path}.",
            headers=dict(exc.headers or {}),
        )
    elif exc.status_code == 400:
        error = invalid_request("The request body could not be read as UTF-8 JSON.")
    else:
        error = GatewayError(
            exc.status_code, "http_error", "invalid_request_error", str(exc.detail)
        )
    return _envelope(error)


async def _on_database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: PostgreSQL unavailable (%r)", request.method, request.url.path, exc)
    return _envelope(
        gateway_unavailable("The control plane cannot reach its database right now; retry shortly.")
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """The server logs the traceback itself (Starlette re-raises after this answer)."""
    return _envelope(GatewayError(500, "internal_error", "api_error", "Internal error."))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    for kind in _DATABASE_DOWN:
        app.add_exception_handler(kind, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)
