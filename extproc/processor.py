"""One ext_proc stream is one HTTP request: a `Processor` per stream, one method per phase.

- request headers: match the endpoint, drop client-sent `x-aig-*` headers, authenticate the
  gateway key (401 before the body is read); GET /v1/models is answered here.
- request body (buffered): parse the JSON once, resolve and check the model, admit, then send the
  request on to its provider with the provider's auth (see `upstreams`).
- response headers and body: passed through.

Phase methods raise `GatewayError`; the server turns it into the client's answer.
"""

from __future__ import annotations

from typing import Any

import orjson
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    HttpTrailers,
    ProcessingResponse,
)

from aigw.errors import invalid_api_key, invalid_request, model_not_allowed, provider_not_configured
from aigw.keys import hash_key, looks_like_key
from aigw.policy import KeyPolicy
from extproc.endpoints import Endpoint, match_endpoint
from extproc.gateway import Gateway
from extproc.messages import (
    CONTINUE_REQUEST_HEADERS,
    CONTINUE_REQUEST_TRAILERS,
    CONTINUE_RESPONSE_BODY,
    CONTINUE_RESPONSE_HEADERS,
    CONTINUE_RESPONSE_TRAILERS,
    immediate_response,
    remove_request_headers,
)
from extproc.upstreams import with_body

_GATEWAY_HEADER_PREFIX = "x-aig-"
_ANTHROPIC = "anthropic"
_JSON_TYPES = {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}


class Processor:
    """The state of one request across its phases."""

    __slots__ = ("_content_length", "_endpoint", "_gateway", "_policy", "request_id")

    _endpoint: Endpoint
    _policy: KeyPolicy

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.request_id = ""
        self._content_length = False

    async def request_headers(self, message: HttpHeaders) -> ProcessingResponse:
        method = path = ""
        authorization = api_key = None
        foreign: list[str] = []
        for entry in message.headers.headers:
            name = entry.key
            if name == ":path":
                path = entry.raw_value.decode("latin-1")
            elif name == ":method":
                method = entry.raw_value.decode("latin-1")
            elif name == "x-request-id":
                self.request_id = entry.raw_value.decode("latin-1")
            elif name == "authorization":
                authorization = entry.raw_value
            elif name == "x-api-key":
                api_key = entry.raw_value
            elif name == "content-length":
                self._content_length = True
            elif name.startswith(_GATEWAY_HEADER_PREFIX):
                foreign.append(name)

        endpoint, model = match_endpoint(method, path)
        policy = await self._authenticate(authorization, api_key)
        if endpoint is Endpoint.LIST_MODELS:
            return self._ok(self._gateway.listing.list_body(policy))
        if endpoint is Endpoint.RETRIEVE_MODEL:
            return self._ok(self._gateway.listing.model_body(policy, model))
        if message.end_of_stream:
            raise invalid_request("The request has no body: send a JSON object with a 'model'.")
        self._endpoint = endpoint
        self._policy = policy
        return remove_request_headers(foreign) if foreign else CONTINUE_REQUEST_HEADERS

    async def request_body(self, message: HttpBody) -> ProcessingResponse:
        body = _parse_body(message.body)
        requested = body.get("model")
        if requested is None:
            raise invalid_request("Missing required parameter: 'model'.", "model")
        if not isinstance(requested, str):
            kind = _JSON_TYPES.get(type(requested), "a number")
            raise invalid_request(
                f"Invalid type for 'model': expected a string, but got {kind}.", "model"
            )

        gateway = self._gateway
        route = gateway.catalog.resolve(requested)
        if not self._policy.allows(route.canonical):
            raise model_not_allowed(route.canonical)
        if self._endpoint is Endpoint.MESSAGES and route.provider != _ANTHROPIC:
            raise invalid_request(
                f"/v1/messages serves Anthropic models only, not '{route.canonical}'; "
                "use /v1/chat/completions or /v1/responses for it.",
                "model",
            )
        forward = gateway.upstreams[route.provider].forward
        if forward is None:
            raise provider_not_configured(route.provider)

        await gateway.admission.admit(self._policy, route, body)

        if route.upstream_model == requested:
            return forward
        body["model"] = route.upstream_model
        return with_body(forward, orjson.dumps(body), self._content_length)

    async def response_headers(self, message: HttpHeaders) -> ProcessingResponse:
        return CONTINUE_RESPONSE_HEADERS

    async def response_body(self, message: HttpBody) -> ProcessingResponse:
        return CONTINUE_RESPONSE_BODY

    async def request_trailers(self, message: HttpTrailers) -> ProcessingResponse:
        return CONTINUE_REQUEST_TRAILERS

    async def response_trailers(self, message: HttpTrailers) -> ProcessingResponse:
        return CONTINUE_RESPONSE_TRAILERS

    def on_stream_closed(self) -> None:
        """Called exactly once when the stream ends, however it ends (completed, reset by Envoy,
        cancelled). Nothing is held per request yet; settling a request's metering and
        reservation belongs here (as a task: the stream's own task may be cancelled)."""

    async def _authenticate(self, authorization: bytes | None, api_key: bytes | None) -> KeyPolicy:
        key = _presented_key(authorization, api_key)
        policy = await self._gateway.policies.lookup(hash_key(key))
        if policy is None:
            raise invalid_api_key("Incorrect API key provided.")
        if not policy.usable_at(self._gateway.clock()):
            raise invalid_api_key("This API key has been revoked, has expired or was rotated out.")
        return policy

    def _ok(self, body: bytes) -> ProcessingResponse:
        return immediate_response(200, body, self.request_id, "aigw_answered")


def _presented_key(authorization: bytes | None, api_key: bytes | None) -> str:
    """The `sk-aig-` key of `Authorization: Bearer` or else of `x-api-key`; 401 when none."""
    if authorization is not None:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and looks_like_key(token):
            return token
    if api_key is not None:
        token = api_key.decode("latin-1").strip()
        if looks_like_key(token):
            return token
    if authorization is None and api_key is None:
        raise invalid_api_key()
    raise invalid_api_key(
        "Malformed API key: gateway keys start with 'sk-aig-' and are sent as "
        "'Authorization: Bearer <key>' or 'x-api-key: <key>'."
    )


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    return body
